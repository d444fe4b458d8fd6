// The page of /docs: Swagger UI on this daemon's own /openapi.json. Everything it loads comes
// from the daemon (no network beyond it): the validator badge, which would call out, is off.
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  // A token typed into "Authorize" lives in this page only, never in storage.
  persistAuthorization: false,
  tryItOutEnabled: false,
});
