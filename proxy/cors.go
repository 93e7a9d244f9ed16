package proxy

import (
	"net"
	"net/netip"
	"net/url"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/internal/hostcheck"
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
	ctx.SetStatusCode(fasthttp.StatusForbidden)
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

// applyCORS handles the Origin header as Ollama does. A request whose
// Origin is neither local nor allowed by cors.allowed_origins gets 403 with
// an empty body, and an allowed one gets the CORS headers. An Origin that
// names the Host the request was sent to marks a same-origin request,
// which Ollama's CORS middleware (gin-contrib/cors) leaves alone. It
// reports whether the request may continue.
func (s *Server) applyCORS(ctx *fasthttp.RequestCtx, rt route) bool {
	origin := ctx.Request.Header.Peek("Origin")
	if s.originRejected(origin, ctx.Host()) {
		ctx.SetStatusCode(fasthttp.StatusForbidden)
		return false
	}
	if len(origin) == 0 || isSameOrigin(origin, ctx.Host()) {
		return true
	}
	h := &ctx.Response.Header
	h.SetBytesV("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	if rt.how == handleOptions {
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS")
		h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
		h.Set("Access-Control-Max-Age", "43200")
	}
	h.Set("Access-Control-Expose-Headers", "X-Request-Id, X-LLMProxy-Node, X-LLMProxy-Cache")
	return true
}

// originRejected reports whether applyCORS rejects a request with the
// Origin header origin, empty when there is none, sent to host.
func (s *Server) originRejected(origin, host []byte) bool {
	return len(origin) != 0 && !isSameOrigin(origin, host) && !s.originAllowed(string(origin))
}

// corsAllowHeaders lists the request headers that a preflight allows:
// those of Ollama's GenerateRoutes (server/routes.go, Ollama v0.17.4),
// which include the x-stainless-* headers that OpenAI's SDKs send, and
// the headers that the proxy itself reads.
const corsAllowHeaders = "Authorization, Content-Type, User-Agent, Accept, X-Requested-With, " +
	"OpenAI-Beta, x-stainless-arch, x-stainless-async, x-stainless-custom-poll-interval, " +
	"x-stainless-helper-method, x-stainless-lang, x-stainless-os, " +
	"x-stainless-package-version, x-stainless-poll-helper, x-stainless-retry-count, " +
	"x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout, " +
	"X-API-Key, X-Priority, X-Request-Id, Cache-Control"

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

// originAllowed reports whether origin is allowed. Like Ollama's default
// (AllowedOrigins in envconfig/config.go, Ollama v0.17.4), it allows http
// and https origins on localhost, 127.0.0.1 or 0.0.0.0 with any port, and
// every origin with the app, file, tauri, vscode-webview or vscode-file
// scheme. It also allows the entries of cors.allowed_origins, where "*"
// allows any origin and a "*" inside an entry matches any text, as in
// "https://*.example.com".
func (s *Server) originAllowed(origin string) bool {
	for _, allowed := range s.config().CORS.AllowedOrigins {
		if allowed == "*" || allowed == origin || wildcardMatch(allowed, origin) {
			return true
		}
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	switch u.Scheme {
	case "app", "file", "tauri", "vscode-webview", "vscode-file":
		return true
	case "http", "https":
		host := u.Hostname()
		return host == "localhost" || host == "127.0.0.1" || host == "0.0.0.0"
	}
	return false
}

func wildcardMatch(pattern, s string) bool {
	i := strings.IndexByte(pattern, '*')
	if i < 0 {
		return false
	}
	prefix, suffix := pattern[:i], pattern[i+1:]
	return len(s) >= len(prefix)+len(suffix) &&
		strings.HasPrefix(s, prefix) && strings.HasSuffix(s, suffix)
}
