"""Marshmallow schemas, by resource: what requests may send and responses carry."""
