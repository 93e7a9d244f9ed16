package ollamasim

import (
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"github.com/llmproxy/llmproxy/internal/hostcheck"
	"github.com/llmproxy/llmproxy/internal/wire"
)

// passAccess applies Ollama's CORS middleware and then its check against
// DNS rebinding, in the order of GenerateRoutes (server/routes.go, Ollama
// v0.17.4), and reports whether the request may continue. A foreign
// Origin or Host gets 403 with an empty body. A request from an allowed
// cross origin gets the CORS headers, and on OPTIONS ends as a preflight
// with 204. An OPTIONS request that the Host check lets through for its
// host name, rather than for an IP address, ends with 204 too. Any other
// OPTIONS request goes on to routing, which responds with 405 or 404.
func (s *Server) passAccess(w http.ResponseWriter, r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin != "" && !isSameOrigin(origin, r.Host) {
		if !s.originAllowed(origin) {
			w.WriteHeader(http.StatusForbidden)
			return false
		}
		s.setCORSHeaders(w.Header(), origin, r.Method == http.MethodOptions)
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusNoContent)
			return false
		}
	}
	if !s.hostAllowed(r) {
		w.WriteHeader(http.StatusForbidden)
		return false
	}
	if r.Method == http.MethodOptions && hostcheck.Applies(localAddr(r)) && !isIPHost(r.Host) {
		w.WriteHeader(http.StatusNoContent)
		return false
	}
	return true
}

// setCORSHeaders sets the headers that gin-contrib/cors v1.7.2 sends to an
// allowed cross origin, and those of a preflight when preflight is set.
// "*" among the allowed origins allows every origin.
func (s *Server) setCORSHeaders(h http.Header, origin string, preflight bool) {
	anyOrigin := slices.Contains(s.cfg.AllowedOrigins, "*")
	if anyOrigin {
		h.Set("Access-Control-Allow-Origin", "*")
	} else {
		h.Set("Access-Control-Allow-Origin", origin)
		h.Add("Vary", "Origin")
	}
	if !preflight {
		return
	}
	h.Set("Access-Control-Allow-Methods", wire.CORSAllowMethods)
	h.Set("Access-Control-Allow-Headers", wire.CORSAllowHeaders)
	h.Set("Access-Control-Max-Age", wire.CORSMaxAge)
	if !anyOrigin {
		h.Add("Vary", "Access-Control-Request-Method")
		h.Add("Vary", "Access-Control-Request-Headers")
	}
}

// isSameOrigin reports whether origin is http:// or https:// followed by
// host, which gin-contrib/cors treats as no CORS request at all.
func isSameOrigin(origin, host string) bool {
	return origin == "http://"+host || origin == "https://"+host
}

// isIPHost reports whether host, a Host header with or without a port, is
// an IP address.
func isIPHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	_, err := netip.ParseAddr(host)
	return err == nil
}

// localAddr returns the local address of the request's connection, or nil
// outside a server.
func localAddr(r *http.Request) net.Addr {
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return local
}

// localOriginSchemes are the non-web schemes whose origins Ollama accepts:
// desktop apps, editors and browser extensions.
var localOriginSchemes = []string{
	"app", "file", "tauri", "vscode-webview", "vscode-file",
	"chrome-extension", "moz-extension", "safari-web-extension",
}

// originAllowed reports whether Ollama would accept a request with this
// Origin header: none, a local web origin, a local scheme, or one listed in
// Config.AllowedOrigins.
func (s *Server) originAllowed(origin string) bool {
	if origin == "" || slices.Contains(s.cfg.AllowedOrigins, "*") ||
		slices.Contains(s.cfg.AllowedOrigins, origin) {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	if slices.Contains(localOriginSchemes, u.Scheme) {
		return true
	}
	switch u.Hostname() {
	case "localhost", "127.0.0.1", "0.0.0.0":
		return u.Scheme == "http" || u.Scheme == "https"
	}
	return false
}

// hostAllowed applies Ollama's check against DNS rebinding with the rule
// of package hostcheck.
//
// NOTE: Ollama decides by the address of its listener, and this uses the
// local address of the connection, which is the same unless the simulator
// listens on a wildcard address and is reached over loopback. Then it
// checks Host where Ollama would not.
func (s *Server) hostAllowed(r *http.Request) bool {
	return !hostcheck.Applies(localAddr(r)) || hostcheck.Allowed(r.Host)
}
