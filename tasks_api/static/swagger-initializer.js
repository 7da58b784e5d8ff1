// Starts Swagger UI on /docs. A file rather than an inline script, for the page's CSP.
window.addEventListener("load", () => {
  const root = document.getElementById("swagger-ui");
  const config = JSON.parse(document.getElementById("swagger-ui-config").textContent);
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    ...config,
  });
});
