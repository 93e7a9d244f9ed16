package statuspage

import (
	"context"
	"crypto/subtle"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
	"golang.org/x/net/html"
)

// The tests in this file load the page in headless Chromium, which runs
// its script against a fake proxy on 127.0.0.1, and check the DOM that
// Chromium dumps once the script has rendered.

const testToken = "s3cret-token"

// Strings the page must show as text, never as markup.
const (
	scriptError = `upstream said <script>document.title="pwned"</script>`
	imageModel  = `llama3<img src=x onerror="document.title='pwned'">`
)

func fakeSnapshot() Snapshot {
	at := time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC)
	return Snapshot{
		Version:       "1.2.3-test",
		UptimeSeconds: 3*3600 + 25*60,
		Time:          at,
		Nodes: []NodeStatus{
			{
				Name: "gpu1", URL: "http://127.0.0.1:11435", State: "up", Breaker: "closed",
				Inflight: 3, MaxConcurrent: 4,
				LoadedModels:    []string{"llama3.2:3b", "nomic-embed-text:latest"},
				TokensPerSecond: 42.5,
			},
			{
				Name: "gpu2", URL: "http://127.0.0.1:11436", State: "down", Breaker: "open",
				MaxConcurrent: 4,
				LastError:     "dial tcp 127.0.0.1:11436: connect: connection refused <b>x</b>",
			},
		},
		QueueDepth: map[string]int{"priority": 2, "standard": 5, "batch": 11},
		Cache:      NewCacheStats(300, 100),
		Redis: &RedisStatus{Degraded: []string{
			"the response cache uses the in-process tier only",
			"rate limits and quotas are counted by each instance alone",
		}},
		RecentErrors: []ErrorRecord{
			{
				Time: at, RequestID: "req-0002", Route: "/api/chat", Model: imageModel,
				Node: "gpu2", Status: 502, Error: scriptError,
			},
			{
				Time: at.Add(-time.Minute), RequestID: "req-0001", Route: "/v1/chat/completions",
				Model: "llama3.2:3b", Status: 429, Error: "rate limit exceeded",
			},
		},
	}
}

// fakeProxy serves Page and JSON as the proxy does: the page without a
// token, the snapshot behind a bearer token.
type fakeProxy struct {
	src        Source
	token      string
	status     int // when non-zero, /admin/status fails with it
	authorized atomic.Int64
}

func (p *fakeProxy) handle(ctx *fasthttp.RequestCtx) {
	switch string(ctx.Path()) {
	case "/admin", "/admin/":
		Page(ctx)
	case "/admin/status":
		if p.status != 0 {
			writeError(ctx, p.status, "node set is reloading")
			return
		}
		got, _ := strings.CutPrefix(string(ctx.Request.Header.Peek("Authorization")), "Bearer ")
		if subtle.ConstantTimeCompare([]byte(got), []byte(p.token)) != 1 {
			writeError(ctx, fasthttp.StatusUnauthorized, "admin token required")
			return
		}
		p.authorized.Add(1)
		JSON(p.src)(ctx)
	default:
		writeError(ctx, fasthttp.StatusNotFound, "not found")
	}
}

// serve starts p on a free port of 127.0.0.1 and returns its base URL.
func serve(t *testing.T, p *fakeProxy) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := &fasthttp.Server{Handler: p.handle, CloseOnShutdown: true}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		if err := srv.Shutdown(); err != nil {
			t.Errorf("shut down the fake proxy: %v", err)
		}
		// Shutdown closes only a listener that Serve has already taken up,
		// so a test that ends at once (a skip) would leave Serve waiting.
		_ = ln.Close()
		<-done
	})
	return "http://" + ln.Addr().String()
}

// chromium returns the path of the chromium binary. It skips the test
// when there is none, unless the CI variable is set, where a missing
// browser must fail the run rather than pass it untested.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "/usr/bin/chromium"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	if _, ci := os.LookupEnv("CI"); !ci {
		t.Skip("chromium not found, so the page is not tested in a browser; " +
			"install it with: apt-get install -y chromium")
	}
	t.Fatal("chromium not found and CI is set; install it with: apt-get install -y chromium")
	return ""
}

// runChromium runs headless Chromium with args after the common flags and
// returns its standard output. Every host name other than 127.0.0.1 fails
// to resolve, so the browser's own background requests go nowhere.
func runChromium(t *testing.T, args ...string) string {
	t.Helper()
	bin := chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	common := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
		"--user-data-dir=" + t.TempDir(),
		"--virtual-time-budget=5000",
	}
	cmd := exec.CommandContext(ctx, bin, append(common, args...)...)
	// Chromium starts helper processes, so a timeout kills its whole group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("chromium timed out after 40s; stderr:\n%s", stderr.String())
		}
		t.Fatalf("chromium %v: %v; stderr:\n%s", args, err, stderr.String())
	}
	return stdout.String()
}

// loadPage loads url and returns the DOM after the script has run.
func loadPage(t *testing.T, url string) *html.Node {
	t.Helper()
	dump := runChromium(t, "--dump-dom", url)
	if path := os.Getenv("STATUSPAGE_SCREENSHOT"); path != "" {
		runChromium(t, "--screenshot="+path, "--window-size=1280,900", url)
		t.Logf("screenshot of %s written to %s", url, path)
	}
	doc, err := html.Parse(strings.NewReader(dump))
	if err != nil {
		t.Fatalf("parse the dumped DOM: %v", err)
	}
	return doc
}

func TestBrowserShowsSnapshot(t *testing.T) {
	proxy := &fakeProxy{src: SourceFunc(fakeSnapshot), token: testToken}
	doc := loadPage(t, serve(t, proxy)+"/admin#token="+testToken)

	if n := proxy.authorized.Load(); n == 0 {
		t.Fatal("the page never sent the token from its URL fragment")
	}
	if got := attr(byID(t, doc, "", "body"), "data-state"); got != "connected" {
		t.Fatalf("body data-state = %q, want connected", got)
	}
	if !hasAttr(byID(t, doc, "banner", ""), "hidden") {
		t.Error("banner shown while connected")
	}
	checkSummary(t, doc)
	checkNodes(t, doc)
	checkQueue(t, doc)
	checkErrors(t, doc)
	checkNoInjection(t, doc)
}

func checkSummary(t *testing.T, doc *html.Node) {
	t.Helper()
	want := map[string]string{
		"version":        "version 1.2.3-test",
		"uptime":         "3h 25m",
		"nodes-up":       "1 / 2",
		"inflight-total": "3 / 8",
		"queued-total":   "18",
		"cache-rate":     "75.0%",
		"cache-hits":     "300",
		"cache-misses":   "100",
		"redis-state":    "down",
		"redis-degraded": "the response cache uses the in-process tier only; " +
			"rate limits and quotas are counted by each instance alone",
	}
	for id, w := range want {
		if got := textOf(byID(t, doc, id, "")); got != w {
			t.Errorf("#%s = %q, want %q", id, got, w)
		}
	}
	if hasAttr(byID(t, doc, "redis-card", ""), "hidden") {
		t.Error("Redis card hidden while the snapshot has Redis")
	}
}

func checkNodes(t *testing.T, doc *html.Node) {
	t.Helper()
	rows := findAll(byID(t, doc, "nodes-body", ""), func(n *html.Node) bool {
		return hasClass(n, "node")
	})
	if len(rows) != 2 {
		t.Fatalf("node rows = %d, want 2", len(rows))
	}
	cases := []struct {
		name, state, breaker, load, models, tps, lastError string
	}{
		{"gpu1", "up", "closed", "3 / 4", "llama3.2:3bnomic-embed-text:latest", "42.5", ""},
		{"gpu2", "down", "open", "0 / 4", "none", "–",
			"dial tcp 127.0.0.1:11436: connect: connection refused <b>x</b>"},
	}
	for i, want := range cases {
		row := rows[i]
		if got := attr(row, "data-node"); got != want.name {
			t.Errorf("row %d data-node = %q, want %q", i, got, want.name)
		}
		if got := textOf(firstByClass(t, row, "node-name")); got != want.name {
			t.Errorf("row %d name = %q, want %q", i, got, want.name)
		}
		cells := map[string]string{
			"state": want.state, "breaker": want.breaker, "load": want.load,
			"models": want.models, "tps": want.tps, "last-error": want.lastError,
		}
		for class, w := range cells {
			if got := textOf(firstByClass(t, row, class)); got != w {
				t.Errorf("node %s %s = %q, want %q", want.name, class, got, w)
			}
		}
	}
}

func checkQueue(t *testing.T, doc *html.Node) {
	t.Helper()
	cards := findAll(byID(t, doc, "queue-body", ""), func(n *html.Node) bool {
		return hasClass(n, "queue-class")
	})
	want := []struct {
		class, depth string
	}{{"priority", "2"}, {"standard", "5"}, {"batch", "11"}}
	if len(cards) != len(want) {
		t.Fatalf("queue classes = %d, want %d", len(cards), len(want))
	}
	for i, w := range want {
		if got := attr(cards[i], "data-class"); got != w.class {
			t.Errorf("queue card %d class = %q, want %q", i, got, w.class)
		}
		if got := textOf(firstByClass(t, cards[i], "value")); got != w.depth {
			t.Errorf("queue %s depth = %q, want %q", w.class, got, w.depth)
		}
	}
}

func checkErrors(t *testing.T, doc *html.Node) {
	t.Helper()
	rows := findAll(byID(t, doc, "errors-body", ""), func(n *html.Node) bool {
		return hasClass(n, "recent-error")
	})
	if len(rows) != 2 {
		t.Fatalf("error rows = %d, want 2", len(rows))
	}
	cells := findAll(rows[0], func(n *html.Node) bool { return n.Type == html.ElementNode && n.Data == "td" })
	want := []string{"", "502", "/api/chat", imageModel, "gpu2", "req-0002", scriptError}
	if len(cells) != len(want) {
		t.Fatalf("first error row has %d cells, want %d", len(cells), len(want))
	}
	if textOf(cells[0]) == "" {
		t.Error("first error row shows no time")
	}
	for i := 1; i < len(want); i++ {
		if got := textOf(cells[i]); got != want[i] {
			t.Errorf("first error cell %d = %q, want %q", i, got, want[i])
		}
	}
}

// checkNoInjection checks that the hostile strings stayed text: the only
// script element is the page's own, and no img or b element exists.
func checkNoInjection(t *testing.T, doc *html.Node) {
	t.Helper()
	for _, tag := range []string{"script", "img", "b"} {
		els := findAll(doc, func(n *html.Node) bool { return n.Type == html.ElementNode && n.Data == tag })
		want := 0
		if tag == "script" {
			want = 1
		}
		if len(els) != want {
			t.Errorf("%d <%s> elements in the DOM, want %d", len(els), tag, want)
		}
	}
	if got := textOf(byID(t, doc, "", "title")); got != "llmproxy status" {
		t.Errorf("title = %q, want llmproxy status (an injected handler ran)", got)
	}
}

func TestBrowserAsksForToken(t *testing.T) {
	proxy := &fakeProxy{src: SourceFunc(fakeSnapshot), token: testToken}
	doc := loadPage(t, serve(t, proxy)+"/admin")

	if got := attr(byID(t, doc, "", "body"), "data-state"); got != "unauthorized" {
		t.Fatalf("body data-state = %q, want unauthorized", got)
	}
	if hasAttr(byID(t, doc, "token-form", ""), "hidden") {
		t.Error("token form hidden, want it shown")
	}
	banner := byID(t, doc, "banner", "")
	if hasAttr(banner, "hidden") {
		t.Error("banner hidden, want it shown")
	}
	if got := textOf(banner); !strings.Contains(got, "admin token") {
		t.Errorf("banner = %q, want it to ask for the admin token", got)
	}
	if n := proxy.authorized.Load(); n != 0 {
		t.Errorf("%d authorized snapshot requests without a token, want 0", n)
	}
	rows := findAll(byID(t, doc, "nodes-body", ""), func(n *html.Node) bool { return hasClass(n, "node") })
	if len(rows) != 0 {
		t.Errorf("node rows = %d without a token, want 0", len(rows))
	}
}

func TestBrowserShowsDisconnected(t *testing.T) {
	proxy := &fakeProxy{src: SourceFunc(fakeSnapshot), status: fasthttp.StatusServiceUnavailable}
	doc := loadPage(t, serve(t, proxy)+"/admin")

	if got := attr(byID(t, doc, "", "body"), "data-state"); got != "disconnected" {
		t.Fatalf("body data-state = %q, want disconnected", got)
	}
	banner := byID(t, doc, "banner", "")
	if hasAttr(banner, "hidden") {
		t.Fatal("banner hidden, want the disconnected banner")
	}
	got := textOf(banner)
	for _, want := range []string{"Disconnected", "HTTP 503"} {
		if !strings.Contains(got, want) {
			t.Errorf("banner = %q, want it to contain %q", got, want)
		}
	}
	if !hasAttr(byID(t, doc, "token-form", ""), "hidden") {
		t.Error("token form shown for a server error, want it hidden")
	}
}

// byID returns the element with the given id, or else the first element
// named tag, failing the test when there is none.
func byID(t *testing.T, doc *html.Node, id, tag string) *html.Node {
	t.Helper()
	found := findAll(doc, func(n *html.Node) bool {
		if n.Type != html.ElementNode {
			return false
		}
		if id != "" {
			return attr(n, "id") == id
		}
		return n.Data == tag
	})
	if len(found) == 0 {
		t.Fatalf("no element with id %q or tag %q in the DOM", id, tag)
	}
	return found[0]
}

func firstByClass(t *testing.T, root *html.Node, class string) *html.Node {
	t.Helper()
	found := findAll(root, func(n *html.Node) bool { return hasClass(n, class) })
	if len(found) == 0 {
		t.Fatalf("no element of class %q", class)
	}
	return found[0]
}

// findAll returns every node under root, root included, that match
// accepts, in document order.
func findAll(root *html.Node, match func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if match(n) {
			out = append(out, n)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(root)
	return out
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func hasAttr(n *html.Node, key string) bool {
	for _, a := range n.Attr {
		if a.Key == key {
			return true
		}
	}
	return false
}

func hasClass(n *html.Node, class string) bool {
	if n.Type != html.ElementNode {
		return false
	}
	for _, c := range strings.Fields(attr(n, "class")) {
		if c == class {
			return true
		}
	}
	return false
}

// textOf returns the text under n, trimmed.
func textOf(n *html.Node) string {
	var b strings.Builder
	for _, c := range findAll(n, func(c *html.Node) bool { return c.Type == html.TextNode }) {
		b.WriteString(c.Data)
	}
	return strings.TrimSpace(b.String())
}
