package proxy

import (
	"bytes"
	"html"
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/valyala/fasthttp"
)

// Ollama serves its gin router through Go's http.ServeMux (Serve in
// server/routes.go of Ollama v0.17.4 registers it with http.Handle("/")),
// and v0.17.4 is built with Go 1.24. So a request reaches two redirects:
// the mux's, for a path that is not clean, before any of Ollama's code
// runs (cleanPathTarget), and then gin's RedirectTrailingSlash, for a
// route's path with a slash added (serveRedirect). gin's RedirectFixedPath
// and RemoveExtraSlash are off, so no other path is fixed.

// cleanPathTarget returns the Location of the redirect that Go's
// http.ServeMux (Go 1.24) sends for a request whose path is not in
// canonical form: with an empty segment, as in /api//tags, or a "." or
// ".." segment, as in /api/./tags. The mux cleans the path as sent, with
// its escapes, and keeps a trailing slash. It redirects every method with
// 301 except CONNECT, whose path it leaves alone. ok is false for a clean
// path.
func cleanPathTarget(ctx *fasthttp.RequestCtx) (target string, ok bool) {
	if ctx.IsConnect() || !mayBeUnclean(ctx.URI().PathOriginal()) {
		return "", false
	}
	return cleanTarget(ctx.URI())
}

// mayBeUnclean reports whether a path as sent may need cleaning. Only an
// empty, "." or ".." segment makes a path that starts with a slash
// unclean, and each needs "//" or "/." in it. The check spares the usual
// clean path a copy.
func mayBeUnclean(original []byte) bool {
	return len(original) > 0 && original[0] == '/' &&
		(bytes.Contains(original, []byte("//")) || bytes.Contains(original, []byte("/.")))
}

// cleanTarget returns the Location that cleanPathTarget describes for u,
// and ok false when cleaning leaves its path as it is.
func cleanTarget(u *fasthttp.URI) (target string, ok bool) {
	raw := string(u.PathOriginal())
	clean := path.Clean(raw)
	if strings.HasSuffix(raw, "/") && clean != "/" {
		clean += "/"
	}
	if clean == raw {
		return "", false
	}
	// The mux puts the escaped path where url.URL wants the plain one, so
	// an escape such as %20 comes out escaped twice, as %2520.
	loc := url.URL{Path: clean, RawQuery: string(u.QueryString())}
	return loc.String(), true
}

// serveRedirect redirects a request whose path is a route's path with a
// trailing slash added to the route, as gin's RedirectTrailingSlash does:
// GET gets 301 and any other method 307, which keeps the method and body.
// The query string goes along.
func serveRedirect(ctx *fasthttp.RequestCtx) {
	p := string(ctx.Path())
	u := url.URL{Path: p[:len(p)-1], RawQuery: string(ctx.URI().QueryString())}
	code := fasthttp.StatusTemporaryRedirect
	if ctx.IsGet() {
		code = fasthttp.StatusMovedPermanently
	}
	writeRedirect(ctx, u.String(), code)
}

// writeRedirect writes the redirect to target that Go's http.Redirect
// writes: a Content-Type on GET and HEAD only, and on GET a short HTML
// link as the body, for clients that do not follow redirects.
func writeRedirect(ctx *fasthttp.RequestCtx, target string, code int) {
	ctx.Response.ResetBody()
	ctx.SetStatusCode(code)
	ctx.Response.Header.Set("Location", target)
	switch {
	case ctx.IsGet():
		ctx.SetContentType("text/html; charset=utf-8")
		ctx.SetBodyString("<a href=\"" + html.EscapeString(target) + "\">" +
			http.StatusText(code) + "</a>.\n\n")
	case ctx.IsHead():
		ctx.SetContentType("text/html; charset=utf-8")
	default:
		ctx.Response.Header.SetNoDefaultContentType(true)
	}
}
