package ollamasim

import (
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
)

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

// hostAllowed applies Ollama's check against DNS rebinding: on a loopback
// listener the Host header must name a local host. Requests on other
// listeners always pass.
func (s *Server) hostAllowed(r *http.Request) bool {
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return true
	}
	if ap, err := netip.ParseAddrPort(local.String()); err != nil || !ap.Addr().IsLoopback() {
		return true
	}

	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(strings.Trim(host, "[]"))
	if ip, err := netip.ParseAddr(host); err == nil {
		// NOTE: Ollama also accepts the addresses of the machine's own
		// interfaces; only loopback, private and unspecified ones pass here.
		return ip.IsLoopback() || ip.IsPrivate() || ip.IsUnspecified()
	}
	if host == "" || host == "localhost" || (s.hostname != "" && host == s.hostname) {
		return true
	}
	for _, tld := range []string{".localhost", ".local", ".internal"} {
		if strings.HasSuffix(host, tld) {
			return true
		}
	}
	return false
}
