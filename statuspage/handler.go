package statuspage

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"math"
	"strings"

	"github.com/valyala/fasthttp"
)

var (
	//go:embed page.html
	pageHTML string
	//go:embed page.css
	pageCSS string
	//go:embed page.js
	pageJS string
)

// page is the assembled status page and the Content-Security-Policy that
// allows exactly its inline style and script.
var page = assemblePage(pageHTML, pageCSS, pageJS)

type assembled struct {
	body []byte
	csp  string
}

// assemblePage inlines css and js into html and builds a policy that
// allows those two blocks by hash and nothing else: no other script, no
// style attribute parsed from markup, and fetches to the page's own origin
// only. So even a string that escaped the script's text nodes could not
// run. It panics when html lacks a placeholder, which the tests catch.
func assemblePage(html, css, js string) assembled {
	for _, marker := range []string{"{{css}}", "{{js}}"} {
		if strings.Count(html, marker) != 1 {
			panic("statuspage: page.html must contain " + marker + " exactly once")
		}
	}
	body := strings.Replace(html, "{{css}}", css, 1)
	body = strings.Replace(body, "{{js}}", js, 1)
	csp := strings.Join([]string{
		"default-src 'none'",
		"script-src '" + sourceHash(js) + "'",
		"style-src '" + sourceHash(css) + "'",
		"connect-src 'self'",
		"base-uri 'none'",
		"form-action 'none'",
		"frame-ancestors 'none'",
	}, "; ")
	return assembled{body: []byte(body), csp: csp}
}

// sourceHash returns the CSP hash source of an inline block.
func sourceHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}

// Page serves the status page for GET and HEAD, and 405 for any other
// method. The page holds no data, so the proxy may serve it without the
// admin token.
func Page(ctx *fasthttp.RequestCtx) {
	if !allowRead(ctx) {
		return
	}
	setSecurityHeaders(ctx)
	ctx.Response.Header.Set("Content-Security-Policy", page.csp)
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.SetBody(page.body)
}

// JSON returns the handler of GET /admin/status, which serves
// src.Snapshot() as JSON for GET and HEAD, and 405 for any other method.
// Nil lists and maps are sent as [] and {}, and non-finite numbers as 0,
// so that the page's script always receives the same shape. The handler
// checks no token: the proxy serves it behind admin.token.
func JSON(src Source) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if !allowRead(ctx) {
			return
		}
		body, err := json.Marshal(normalize(src.Snapshot()))
		if err != nil {
			writeError(ctx, fasthttp.StatusInternalServerError, "encode status snapshot: "+err.Error())
			return
		}
		setSecurityHeaders(ctx)
		ctx.SetContentType("application/json; charset=utf-8")
		ctx.SetBody(body)
	}
}

// allowRead sends 405 for methods other than GET and HEAD, and reports
// whether the request may go on.
func allowRead(ctx *fasthttp.RequestCtx) bool {
	if ctx.IsGet() || ctx.IsHead() {
		return true
	}
	ctx.Response.Header.Set("Allow", "GET, HEAD")
	writeError(ctx, fasthttp.StatusMethodNotAllowed,
		"method "+string(ctx.Method())+" not allowed, use GET")
	return false
}

func setSecurityHeaders(ctx *fasthttp.RequestCtx) {
	h := &ctx.Response.Header
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
}

// writeError sends {"error": msg}, the shape of the proxy's other admin
// errors.
func writeError(ctx *fasthttp.RequestCtx, status int, msg string) {
	body, _ := json.Marshal(map[string]string{"error": msg})
	ctx.Response.Header.Set("Cache-Control", "no-store")
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json; charset=utf-8")
	ctx.SetBody(body)
}

// normalize returns s with nil slices and maps made empty and non-finite
// numbers set to 0, because encoding/json rejects NaN and infinities.
func normalize(s Snapshot) Snapshot {
	// Copy the nodes, so that filling in their lists leaves the
	// source's slice untouched.
	s.Nodes = append(make([]NodeStatus, 0, len(s.Nodes)), s.Nodes...)
	for i := range s.Nodes {
		n := &s.Nodes[i]
		if n.LoadedModels == nil {
			n.LoadedModels = []string{}
		}
		n.TokensPerSecond = finite(n.TokensPerSecond)
	}
	if s.QueueDepth == nil {
		s.QueueDepth = map[string]int{}
	}
	if s.RecentErrors == nil {
		s.RecentErrors = []ErrorRecord{}
	}
	s.UptimeSeconds = finite(s.UptimeSeconds)
	s.Cache.HitRate = finite(s.Cache.HitRate)
	return s
}

func finite(f float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	return f
}
