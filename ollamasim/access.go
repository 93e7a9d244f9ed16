package ollamasim

import (
	"net"
	"net/http"
	"net/url"
	"slices"

	"github.com/llmproxy/llmproxy/internal/hostcheck"
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

// hostAllowed applies Ollama's check against DNS rebinding with the rule
// of package hostcheck.
//
// NOTE: Ollama decides by the address of its listener, and this uses the
// local address of the connection, which is the same unless the simulator
// listens on a wildcard address and is reached over loopback. Then it
// checks Host where Ollama would not.
func (s *Server) hostAllowed(r *http.Request) bool {
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return !hostcheck.Applies(local) || hostcheck.Allowed(r.Host)
}
