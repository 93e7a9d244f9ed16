package proxy

import (
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/internal/hostcheck"
	"github.com/llmproxy/llmproxy/internal/wire"
)

// checkHost applies Ollama's check against DNS rebinding (package
// hostcheck) to a request on the listener configured as listen. When that
// listener is bound to a loopback address and the Host header does not
// name this machine, the request gets 403 with an empty body. It reports
// whether the request may continue.
//
// A listener bound to one address accepts connections only on it, so the
// local address of the connection is the listener's address unless listen
// is a wildcard address, which is never loopback.
func checkHost(ctx *fasthttp.RequestCtx, listen string) bool {
	if hostAllowed(ctx.Host(), ctx.LocalAddr(), listen) {
		return true
	}
	writeForbidden(ctx)
	return false
}

// hostAllowed reports whether checkHost lets a request through: host is
// the request's host, as ctx.Host returns it, and local is the local
// address of its connection on the listener configured as listen.
func hostAllowed(host []byte, local net.Addr, listen string) bool {
	return isLoopbackHost(host) || isWildcardAddress(listen) ||
		!hostcheck.Applies(local) || hostcheck.Allowed(string(host))
}

// isLoopbackHost reports whether host is 127.0.0.1 or localhost, with or
// without a port: the Host of nearly every request to a loopback
// listener, which hostcheck.Allowed also accepts. It spares those
// requests the parsing and the copy that Allowed needs.
func isLoopbackHost(host []byte) bool {
	for _, name := range [...]string{"127.0.0.1", "localhost"} {
		if len(host) >= len(name) && string(host[:len(name)]) == name &&
			(len(host) == len(name) || host[len(name)] == ':') {
			return true
		}
	}
	return false
}

// isWildcardAddress reports whether address, in host:port form, has no
// host or an unspecified one such as 0.0.0.0 or ::, so that its listener
// accepts connections on every local address.
func isWildcardAddress(address string) bool {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return false
	}
	if host == "" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsUnspecified()
}

// applyCORS handles the Origin header as Ollama's CORS middleware does
// (gin-contrib/cors v1.7.2, configured in GenerateRoutes of Ollama
// v0.17.4), on every path. A request whose Origin is neither local nor
// allowed by cors.allowed_origins gets 403 with an empty body, and an
// allowed one gets the CORS headers: those of a preflight on OPTIONS,
// which answersOptions then ends with 204. An Origin that names the Host
// the request was sent to marks a same-origin request, which the
// middleware leaves alone. It reports whether the request may continue.
func (s *Server) applyCORS(ctx *fasthttp.RequestCtx) bool {
	origin := ctx.Request.Header.Peek("Origin")
	if s.originRejected(origin, ctx.Host()) {
		writeForbidden(ctx)
		return false
	}
	if !isCrossOrigin(ctx) {
		return true
	}
	h := &ctx.Response.Header
	anyOrigin := slices.Contains(s.config().CORS.AllowedOrigins, "*")
	if anyOrigin {
		h.Set("Access-Control-Allow-Origin", "*")
	} else {
		h.SetBytesV("Access-Control-Allow-Origin", origin)
	}
	if ctx.IsOptions() {
		h.Set("Access-Control-Allow-Methods", wire.CORSAllowMethods)
		h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
		h.Set("Access-Control-Max-Age", wire.CORSMaxAge)
		if !anyOrigin {
			h.Add("Vary", "Origin")
			h.Add("Vary", "Access-Control-Request-Method")
			h.Add("Vary", "Access-Control-Request-Headers")
		}
		return true
	}
	if !anyOrigin {
		h.Add("Vary", "Origin")
	}
	h.Set("Access-Control-Expose-Headers", "X-Request-Id, X-LLMProxy-Node, X-LLMProxy-Cache")
	return true
}

// originRejected reports whether applyCORS rejects a request with the
// Origin header origin, empty when there is none, sent to host.
func (s *Server) originRejected(origin, host []byte) bool {
	return len(origin) != 0 && !isSameOrigin(origin, host) && !s.originAllowed(string(origin))
}

// isCrossOrigin reports whether the request has an Origin header that
// does not name the Host it was sent to.
func isCrossOrigin(ctx *fasthttp.RequestCtx) bool {
	origin := ctx.Request.Header.Peek("Origin")
	return len(origin) > 0 && !isSameOrigin(origin, ctx.Host())
}

// answersOptions reports whether an OPTIONS request that passed checkHost
// and applyCORS ends with 204 and no body before routing, as in Ollama:
// a preflight from an allowed origin, which its CORS middleware ends, and
// on a loopback listener a request whose Host is a name rather than an IP
// address, which its allowedHostsMiddleware ends. Any other OPTIONS
// request goes on to routing, where no route serves the method: 405 on a
// path that some route serves, 404 on any other.
func answersOptions(ctx *fasthttp.RequestCtx, listen string) bool {
	if isCrossOrigin(ctx) {
		return true
	}
	if isWildcardAddress(listen) || !hostcheck.Applies(ctx.LocalAddr()) {
		return false
	}
	host := string(ctx.Host())
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	_, err := netip.ParseAddr(host)
	return err != nil
}

// writeForbidden sends Ollama's 403 of a foreign Origin or Host: no body
// and no Content-Type.
func writeForbidden(ctx *fasthttp.RequestCtx) {
	ctx.SetStatusCode(fasthttp.StatusForbidden)
	ctx.Response.Header.SetNoDefaultContentType(true)
}

// corsAllowHeaders lists the request headers that a preflight allows:
// Ollama's, then the headers that the proxy itself reads.
const corsAllowHeaders = wire.CORSAllowHeaders + ",X-Api-Key,X-Priority,X-Request-Id,Cache-Control"

// isSameOrigin reports whether origin is http:// or https:// followed by
// host, the request's Host header.
func isSameOrigin(origin, host []byte) bool {
	for _, scheme := range [...]string{"http://", "https://"} {
		if len(origin) == len(scheme)+len(host) && string(origin[:len(scheme)]) == scheme &&
			string(origin[len(scheme):]) == string(host) {
			return true
		}
	}
	return false
}

// defaultOrigins are the origins that Ollama allows by default
// (AllowedOrigins in envconfig/config.go, Ollama v0.17.4): http and https
// on localhost, 127.0.0.1 and 0.0.0.0, with or without any port, and
// every origin with the app, file, tauri, vscode-webview or vscode-file
// scheme.
var defaultOrigins = []string{
	"http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
	"http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
	"http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
	"app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
}

// originAllowed reports whether origin is allowed: it is one of
// defaultOrigins or of cors.allowed_origins, matched as Ollama matches
// them. "*" allows any origin, and an entry with one "*" matches any text
// in its place, as in "https://*.example.com". Any other entry must equal
// the origin.
func (s *Server) originAllowed(origin string) bool {
	for _, list := range [...][]string{defaultOrigins, s.config().CORS.AllowedOrigins} {
		for _, allowed := range list {
			if allowed == "*" || allowed == origin || wildcardMatch(allowed, origin) {
				return true
			}
		}
	}
	return false
}

// wildcardMatch reports whether s starts with the part of pattern before
// its "*" and ends with the part after it, as gin-contrib/cors matches a
// wildcard origin.
func wildcardMatch(pattern, s string) bool {
	prefix, suffix, ok := strings.Cut(pattern, "*")
	return ok && strings.HasPrefix(s, prefix) && strings.HasSuffix(s, suffix)
}
