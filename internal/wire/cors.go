package wire

// CORS preflight headers as Ollama's CORS middleware sends them: that of
// gin-contrib/cors v1.7.2 with cors.DefaultConfig, configured in
// GenerateRoutes (server/routes.go, Ollama v0.17.4).
const (
	// CORSAllowMethods is the Access-Control-Allow-Methods of a preflight.
	CORSAllowMethods = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
	// CORSAllowHeaders is the Access-Control-Allow-Headers of a preflight:
	// the headers of GenerateRoutes, which include the x-stainless-*
	// headers that OpenAI's SDKs send, in canonical form and joined by
	// commas, as gin-contrib/cors writes them.
	CORSAllowHeaders = "Authorization,Content-Type,User-Agent,Accept,X-Requested-With," +
		"Openai-Beta,X-Stainless-Arch,X-Stainless-Async,X-Stainless-Custom-Poll-Interval," +
		"X-Stainless-Helper-Method,X-Stainless-Lang,X-Stainless-Os," +
		"X-Stainless-Package-Version,X-Stainless-Poll-Helper,X-Stainless-Retry-Count," +
		"X-Stainless-Runtime,X-Stainless-Runtime-Version,X-Stainless-Timeout"
	// CORSMaxAge is the Access-Control-Max-Age of a preflight, 12 hours in
	// seconds.
	CORSMaxAge = "43200"
)
