package proxy

import (
	"bytes"
	"strings"
)

// handling is the way the proxy serves a route.
type handling uint8

const (
	handleNotFound         handling = iota
	handleRoot                      // HEAD or GET /: the CLI heartbeat
	handleVersion                   // lowest version among usable nodes
	handleTags                      // union of /api/tags
	handlePS                        // union of /api/ps
	handleModels                    // OpenAI model list, from /api/tags
	handleModel                     // one OpenAI model, from /api/tags
	handleRouted                    // sent to one node that has the model
	handleFanout                    // sent to every node concerned
	handleSticky                    // model creation: one node chosen per client
	handleOptions                   // CORS preflight
	handleAdmin                     // the proxy's own admin routes
	handleMethodNotAllowed          // a known path with another method
	handleMetrics                   // Prometheus metrics
	handleHealthz                   // the process is serving
	handleReadyz                    // at least one node is up
	handleRedirect                  // a known path with a trailing slash
	handleFallback                  // another path under /api/ or /v1/, sent to a node
)

// apiFamily is the API a route belongs to. Each family's clients parse
// only its own error shape.
type apiFamily uint8

const (
	apiOllama    apiFamily = iota // Ollama's own API
	apiOpenAI                     // the OpenAI-compatible routes under /v1
	apiAnthropic                  // the Anthropic-compatible /v1/messages
)

// familyOfPath returns the family of a path whose route is unknown, or was
// lost to a parse error. /v1/messages and the paths under it are
// Anthropic's, the rest of /v1/ is OpenAI's, and any other path Ollama's.
func familyOfPath(path []byte) apiFamily {
	switch {
	case bytes.HasPrefix(path, []byte("/v1/messages")) &&
		(len(path) == len("/v1/messages") || path[len("/v1/messages")] == '/'):
		return apiAnthropic
	case bytes.HasPrefix(path, []byte("/v1/")):
		return apiOpenAI
	}
	return apiOllama
}

// route is the classification of one request.
type route struct {
	// name is the path without parameters, used as a metric label.
	name string
	how  handling
	// family sets the shape of the errors the proxy writes on the route.
	family apiFamily
	// inference marks routes that run a model and take a slot on a node.
	inference bool
	// streams marks routes whose response can stream. Ollama routes stream
	// unless "stream" is false, and the /v1 routes only when it is true.
	streams bool
}

var (
	routeNotFound = route{name: "other", how: handleNotFound}
	routeBadMeth  = route{name: "other", how: handleMethodNotAllowed}
	routeRedirect = route{name: "other", how: handleRedirect}
	routeOptions  = route{name: "options", how: handleOptions}
)

// postRoutes maps the exact paths served by POST.
var postRoutes = map[string]route{
	"/api/generate":        {name: "/api/generate", how: handleRouted, inference: true, streams: true},
	"/api/chat":            {name: "/api/chat", how: handleRouted, inference: true, streams: true},
	"/api/embed":           {name: "/api/embed", how: handleRouted, inference: true},
	"/api/embeddings":      {name: "/api/embeddings", how: handleRouted, inference: true},
	"/api/show":            {name: "/api/show", how: handleRouted},
	"/api/push":            {name: "/api/push", how: handleRouted, streams: true},
	"/api/pull":            {name: "/api/pull", how: handleFanout, streams: true},
	"/api/copy":            {name: "/api/copy", how: handleFanout},
	"/api/create":          {name: "/api/create", how: handleSticky, streams: true},
	"/v1/chat/completions": {name: "/v1/chat/completions", how: handleRouted, family: apiOpenAI, inference: true, streams: true},
	"/v1/completions":      {name: "/v1/completions", how: handleRouted, family: apiOpenAI, inference: true, streams: true},
	"/v1/embeddings":       {name: "/v1/embeddings", how: handleRouted, family: apiOpenAI, inference: true},
	"/v1/responses":        {name: "/v1/responses", how: handleRouted, family: apiOpenAI, inference: true, streams: true},
	"/v1/messages":         {name: "/v1/messages", how: handleRouted, family: apiAnthropic, inference: true, streams: true},
}

// getRoutes maps the exact paths served by GET.
var getRoutes = map[string]route{
	"/":            {name: "/", how: handleRoot},
	"/api/version": {name: "/api/version", how: handleVersion},
	"/api/tags":    {name: "/api/tags", how: handleTags},
	"/api/ps":      {name: "/api/ps", how: handlePS},
	"/v1/models":   {name: "/v1/models", how: handleModels, family: apiOpenAI},
	"/metrics":     {name: "/metrics", how: handleMetrics},
	"/healthz":     {name: "/healthz", how: handleHealthz},
	"/readyz":      {name: "/readyz", how: handleReadyz},
}

var (
	routeDelete = route{name: "/api/delete", how: handleFanout}
	// NOTE: fasthttp reads a blob whole into memory like any body, so a
	// blob over max_body_bytes gets 413 instead of streaming to the node.
	routeBlobs = route{name: "/api/blobs", how: handleSticky}
	routeModel = route{name: "/v1/models/{model}", how: handleModel, family: apiOpenAI}
	routeAdmin = route{name: "/admin", how: handleAdmin}

	// The fallback routes have one name per prefix, because their paths
	// are unbounded and the name is a metric label.
	routeFallbackOllama    = route{name: "/api/*", how: handleFallback}
	routeFallbackOpenAI    = route{name: "/v1/*", how: handleFallback, family: apiOpenAI}
	routeFallbackAnthropic = route{name: "/v1/*", how: handleFallback, family: apiAnthropic}
)

// classify maps a method and path to a route. It allocates nothing for the
// routes on the request path.
//
// A route's path with a trailing slash added gets a redirect to the route
// when the route serves the method, as from Ollama's router (gin's
// RedirectTrailingSlash). Any other path under /api/ or /v1/ that the
// proxy has no route for goes to a node (handleFallback), so that routes
// of newer Ollama versions keep working, except a path under /v1/models/
// with more than one segment (see isModelSubpath). A known path with
// another method, OPTIONS included, gets 405, and every other path 404.
// handle responds to some OPTIONS requests before routing (answersOptions),
// and redirects an unclean path before it classifies it (cleanPathTarget).
func classify(method, path []byte) route {
	// p does not escape, so the compiler converts paths of up to 32 bytes
	// in a stack buffer.
	p := string(path)
	if bytes.HasPrefix(path, []byte("/admin")) &&
		(len(path) == 6 || path[6] == '/') {
		return routeAdmin
	}
	if r, ok := exactRoute(string(method), p); ok {
		return r
	}
	switch {
	case knownPath(p):
		// Counted under the path's own route, so that the metrics show
		// which route receives a wrong method.
		r := routeBadMeth
		r.name = pathRouteName(p)
		return r
	case isFallbackPath(p) && len(p) > 1 && p[len(p)-1] == '/':
		if _, ok := exactRoute(string(method), p[:len(p)-1]); ok {
			return routeRedirect
		}
	}
	if isFallbackPath(p) && !isModelSubpath(p) {
		return fallbackRoute(path)
	}
	return routeNotFound
}

// exactRoute returns the route that serves method on path, if any.
func exactRoute(method, p string) (route, bool) {
	switch method {
	case "POST":
		if r, ok := postRoutes[p]; ok {
			return r, true
		}
		if isBlobPath(p) {
			return routeBlobs, true
		}
	case "GET":
		if r, ok := getRoutes[p]; ok {
			return r, true
		}
		if isModelPath(p) {
			return routeModel, true
		}
	case "HEAD":
		if r, ok := getRoutes[p]; ok && servesHead(p) {
			return r, true
		}
		if isBlobPath(p) {
			return routeBlobs, true
		}
	case "DELETE":
		if p == "/api/delete" {
			return routeDelete, true
		}
	}
	return route{}, false
}

// fallbackRoute returns the fallback route of a path under /api/ or /v1/,
// whose family follows familyOfPath.
func fallbackRoute(path []byte) route {
	switch familyOfPath(path) {
	case apiOpenAI:
		return routeFallbackOpenAI
	case apiAnthropic:
		return routeFallbackAnthropic
	}
	return routeFallbackOllama
}

// isFallbackPath reports whether p is under /api/ or /v1/, the prefixes
// of Ollama's API, where a path that the proxy has no route for goes to a
// node.
func isFallbackPath(p string) bool {
	return strings.HasPrefix(p, "/api/") || strings.HasPrefix(p, "/v1/")
}

// isBlobPath reports whether p is /api/blobs/{digest} with a digest. Like
// a gin parameter, the digest is not empty and contains no slash.
func isBlobPath(p string) bool {
	return isParamPath(p, "/api/blobs/")
}

// isModelPath reports whether p is /v1/models/{model} with a model that
// is not empty and contains no slash, as Ollama's router matches it.
func isModelPath(p string) bool {
	return isParamPath(p, "/v1/models/")
}

// isModelSubpath reports whether p is under /v1/models/ with more than
// one segment, such as /v1/models/user/custom:v1. Ollama's router
// (server/routes.go in v0.17.4) has only /v1/models/:model there, a gin
// parameter of one segment, so Ollama sends 404 for such a path, and the
// proxy sends it without asking a node. p is the unescaped path, on which
// gin matches by default (UseRawPath false), so an escaped slash (%2F)
// counts as a slash.
func isModelSubpath(p string) bool {
	rest, ok := strings.CutPrefix(p, "/v1/models/")
	return ok && strings.IndexByte(rest, '/') >= 0
}

func isParamPath(p, prefix string) bool {
	return len(p) > len(prefix) && strings.HasPrefix(p, prefix) &&
		strings.IndexByte(p[len(prefix):], '/') < 0
}

// pathRouteName returns the name of the route that serves the known path p
// with some method.
func pathRouteName(p string) string {
	if r, ok := postRoutes[p]; ok {
		return r.name
	}
	if r, ok := getRoutes[p]; ok {
		return r.name
	}
	switch {
	case p == "/api/delete":
		return routeDelete.name
	case isBlobPath(p):
		return routeBlobs.name
	case isModelPath(p):
		return routeModel.name
	}
	return routeBadMeth.name
}

// knownPath reports whether some route serves p with some method.
func knownPath(p string) bool {
	if _, ok := postRoutes[p]; ok {
		return true
	}
	if _, ok := getRoutes[p]; ok {
		return true
	}
	return p == "/api/delete" || isBlobPath(p) || isModelPath(p)
}

// compat reports whether the route is one of Ollama's compatibility
// routes under /v1, OpenAI's or Anthropic's. Their requests stream only
// when "stream" is true and may set max_tokens.
func (r route) compat() bool { return r.family != apiOllama }

// api reports whether the route is part of the Ollama or OpenAI API, which
// API keys protect. The heartbeat, probes, metrics, admin routes and
// trailing-slash redirects are not.
func (r route) api() bool {
	switch r.how {
	case handleRoot, handleOptions, handleAdmin, handleMetrics, handleHealthz, handleReadyz,
		handleNotFound, handleMethodNotAllowed, handleRedirect:
		return false
	}
	return true
}

// operational reports the routes that admin.listen moves to their own
// listener: admin routes and metrics.
func (r route) operational() bool {
	return r.how == handleAdmin || r.how == handleMetrics
}

// servesHead reports whether the GET route of p also serves HEAD. Ollama
// registers HEAD for /, /api/version and /api/tags only (and for blobs,
// which have no GET), so HEAD on its other GET routes gets 405. The
// proxy's own probes and metrics serve HEAD too.
func servesHead(p string) bool {
	switch p {
	case "/", "/api/version", "/api/tags", "/metrics", "/healthz", "/readyz":
		return true
	}
	return false
}

// allowedMethods returns the Allow header of a known path, as gin writes
// it in Ollama's 405: the methods that serve the path, in the order in
// which Ollama's router first registered each method (HEAD, GET, POST,
// DELETE), joined by ", ".
func allowedMethods(path []byte) string {
	p := string(path)
	var methods []string
	if servesHead(p) || isBlobPath(p) {
		methods = append(methods, "HEAD")
	}
	if _, ok := getRoutes[p]; ok || isModelPath(p) {
		methods = append(methods, "GET")
	}
	if _, ok := postRoutes[p]; ok || isBlobPath(p) {
		methods = append(methods, "POST")
	}
	if p == "/api/delete" {
		methods = append(methods, "DELETE")
	}
	return strings.Join(methods, ", ")
}
