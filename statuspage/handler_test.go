package statuspage

import (
	"encoding/json"
	"math"
	"regexp"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

func request(method, path string) *fasthttp.RequestCtx {
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod(method)
	ctx.Request.SetRequestURI(path)
	return &ctx
}

func TestPageServesHTML(t *testing.T) {
	ctx := request("GET", "/admin")
	Page(ctx)

	if got := ctx.Response.StatusCode(); got != fasthttp.StatusOK {
		t.Fatalf("status = %d, want 200", got)
	}
	if got := string(ctx.Response.Header.ContentType()); got != "text/html; charset=utf-8" {
		t.Errorf("content type = %q, want text/html; charset=utf-8", got)
	}
	if got := string(ctx.Response.Header.Peek("Cache-Control")); got != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", got)
	}
	body := string(ctx.Response.Body())
	if strings.Contains(body, "{{") {
		t.Error("page still contains a {{...}} placeholder")
	}
	for _, outside := range []string{"src=", "href=", "@import", "url("} {
		if strings.Contains(body, outside) {
			t.Errorf("page contains %q, want no outside assets", outside)
		}
	}
}

// The policy must allow exactly the inline blocks the page carries, or
// the browser would refuse to run them.
func TestPagePolicyHashesInlineBlocks(t *testing.T) {
	ctx := request("GET", "/admin")
	Page(ctx)
	body := string(ctx.Response.Body())
	csp := string(ctx.Response.Header.Peek("Content-Security-Policy"))

	for _, block := range []struct{ tag, directive string }{
		{"script", "script-src"}, {"style", "style-src"},
	} {
		re := regexp.MustCompile(`(?s)<` + block.tag + `>(.*?)</` + block.tag + `>`)
		matches := re.FindAllStringSubmatch(body, -1)
		if len(matches) != 1 {
			t.Fatalf("%d inline <%s> blocks, want 1", len(matches), block.tag)
		}
		want := block.directive + " '" + sourceHash(matches[0][1]) + "'"
		if !strings.Contains(csp, want) {
			t.Errorf("policy %q lacks %q", csp, want)
		}
	}
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("policy %q lacks %q", csp, want)
		}
	}
}

// The script builds the DOM from text nodes only, because these calls would
// parse server strings as markup or code.
func TestScriptAvoidsMarkupSinks(t *testing.T) {
	for _, sink := range []string{
		"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
		"new Function", "setAttribute(",
	} {
		if strings.Contains(pageJS, sink) {
			t.Errorf("page.js uses %s", sink)
		}
	}
}

func TestAssemblePageRejectsMissingPlaceholder(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("assemblePage without {{js}} did not panic")
		}
	}()
	assemblePage("<style>{{css}}</style>", "", "")
}

func TestHandlersRejectWrites(t *testing.T) {
	handlers := map[string]fasthttp.RequestHandler{
		"page": Page,
		"json": JSON(SourceFunc(fakeSnapshot)),
	}
	for name, handle := range handlers {
		t.Run(name, func(t *testing.T) {
			ctx := request("POST", "/admin")
			handle(ctx)
			if got := ctx.Response.StatusCode(); got != fasthttp.StatusMethodNotAllowed {
				t.Errorf("status = %d, want 405", got)
			}
			if got := string(ctx.Response.Header.Peek("Allow")); got != "GET, HEAD" {
				t.Errorf("Allow = %q, want GET, HEAD", got)
			}
			var body struct{ Error string }
			if err := json.Unmarshal(ctx.Response.Body(), &body); err != nil || body.Error == "" {
				t.Errorf("body = %q, want {\"error\": ...}", ctx.Response.Body())
			}
		})
	}
}

func TestJSONServesSnapshot(t *testing.T) {
	ctx := request("GET", "/admin/status")
	JSON(SourceFunc(fakeSnapshot))(ctx)

	if got := ctx.Response.StatusCode(); got != fasthttp.StatusOK {
		t.Fatalf("status = %d, want 200", got)
	}
	if got := string(ctx.Response.Header.ContentType()); got != "application/json; charset=utf-8" {
		t.Errorf("content type = %q, want application/json; charset=utf-8", got)
	}
	var got Snapshot
	if err := json.Unmarshal(ctx.Response.Body(), &got); err != nil {
		t.Fatalf("decode %s: %v", ctx.Response.Body(), err)
	}
	want := fakeSnapshot()
	if got.Version != want.Version {
		t.Errorf("version = %q, want %q", got.Version, want.Version)
	}
	if len(got.Nodes) != 2 || got.Nodes[1].LastError != want.Nodes[1].LastError {
		t.Errorf("nodes = %+v, want %+v", got.Nodes, want.Nodes)
	}
	if got.QueueDepth["batch"] != 11 {
		t.Errorf("queue_depth = %v, want batch 11", got.QueueDepth)
	}
	if got.Cache != want.Cache {
		t.Errorf("cache = %+v, want %+v", got.Cache, want.Cache)
	}
	if len(got.RecentErrors) != 2 || got.RecentErrors[0].Error != scriptError {
		t.Errorf("recent_errors = %+v, want the fake's two", got.RecentErrors)
	}
}

// The field names are the contract with page.js.
func TestJSONFieldNames(t *testing.T) {
	ctx := request("GET", "/admin/status")
	JSON(SourceFunc(fakeSnapshot))(ctx)
	body := string(ctx.Response.Body())
	for _, field := range []string{
		"version", "uptime_seconds", "time", "nodes", "name", "url", "state", "breaker",
		"inflight", "max_concurrent", "loaded_models", "tokens_per_second", "last_error",
		"queue_depth", "cache", "hits", "misses", "hit_rate", "recent_errors", "request_id",
		"route", "model", "node", "status", "error",
	} {
		if !strings.Contains(body, `"`+field+`":`) {
			t.Errorf("snapshot JSON lacks %q", field)
		}
	}
}

func TestJSONFillsEmptyFields(t *testing.T) {
	src := SourceFunc(func() Snapshot {
		return Snapshot{
			Nodes:         []NodeStatus{{Name: "gpu1", TokensPerSecond: math.Inf(1)}},
			UptimeSeconds: math.NaN(),
			Cache:         CacheStats{HitRate: math.NaN()},
		}
	})
	ctx := request("GET", "/admin/status")
	JSON(src)(ctx)

	if got := ctx.Response.StatusCode(); got != fasthttp.StatusOK {
		t.Fatalf("status = %d, want 200; body %s", got, ctx.Response.Body())
	}
	body := string(ctx.Response.Body())
	for _, want := range []string{
		`"loaded_models":[]`, `"queue_depth":{}`, `"recent_errors":[]`,
		`"tokens_per_second":0`, `"uptime_seconds":0`, `"hit_rate":0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("body %s lacks %s", body, want)
		}
	}
}

func TestJSONWithoutNodes(t *testing.T) {
	ctx := request("GET", "/admin/status")
	JSON(SourceFunc(func() Snapshot { return Snapshot{} }))(ctx)
	if body := string(ctx.Response.Body()); !strings.Contains(body, `"nodes":[]`) {
		t.Errorf("body %s lacks \"nodes\":[]", body)
	}
}

func TestJSONLeavesSourceUntouched(t *testing.T) {
	nodes := []NodeStatus{{Name: "gpu1"}}
	ctx := request("GET", "/admin/status")
	JSON(SourceFunc(func() Snapshot { return Snapshot{Nodes: nodes} }))(ctx)
	if nodes[0].LoadedModels != nil {
		t.Errorf("source's node changed to %+v", nodes[0])
	}
}

func TestNewCacheStats(t *testing.T) {
	cases := []struct {
		hits, misses uint64
		rate         float64
	}{
		{0, 0, 0},
		{3, 1, 0.75},
		{0, 5, 0},
		{5, 0, 1},
	}
	for _, tc := range cases {
		got := NewCacheStats(tc.hits, tc.misses)
		if got.HitRate != tc.rate {
			t.Errorf("NewCacheStats(%d, %d).HitRate = %v, want %v", tc.hits, tc.misses, got.HitRate, tc.rate)
		}
	}
}
