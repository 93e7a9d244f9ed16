package proxy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// bodyLimit is max_body_bytes in the tests of this file.
const bodyLimit = 64 << 10

// startLimitedProxy starts a proxy with max_body_bytes of bodyLimit whose
// log goes to the returned buffer.
func startLimitedProxy(t *testing.T) (*app.App, *testenv.LogBuffer) {
	t.Helper()
	a := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, a)
	cfg.MaxBodyBytes = bodyLimit
	return startLoggedProxy(t, cfg)
}

// accessLine returns the fields of the access log line of the request with
// this X-Request-Id, waiting for it up to 5 seconds.
func accessLine(t *testing.T, log *testenv.LogBuffer, requestID string) map[string]any {
	t.Helper()
	return findAccessLine(t, log, "request "+requestID, func(rec map[string]any) bool {
		return rec["request_id"] == requestID
	})
}

// findAccessLine returns the fields of the first access log line for which
// match is true, waiting for one up to 5 seconds.
func findAccessLine(t *testing.T, log *testenv.LogBuffer, what string,
	match func(map[string]any) bool) map[string]any {
	t.Helper()
	var line map[string]any
	testenv.WaitFor(t, 5*time.Second, "the access log line of "+what, func() bool {
		for _, rec := range testenv.Records[map[string]any](t, log) {
			if rec["msg"] == "request" && match(rec) {
				line = rec
				return true
			}
		}
		return false
	})
	return line
}

// exchange writes head and then body, from another goroutine, on a new
// connection to the proxy at baseURL, and returns the first response
// with its body.
func exchange(t *testing.T, baseURL, head string, body []byte) (*http.Response, []byte) {
	t.Helper()
	addr := strings.TrimPrefix(baseURL, "http://")
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatalf("send head: %v", err)
	}
	// The proxy may respond and close before it reads the whole body, so a
	// failed write is expected.
	go func() { _, _ = conn.Write(body) }()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read response body: %v", err)
	}
	return resp, b
}

// chunked encodes body with Transfer-Encoding: chunked, in 8 KiB chunks.
func chunked(body []byte) []byte {
	var out bytes.Buffer
	for len(body) > 0 {
		n := min(len(body), 8<<10)
		fmt.Fprintf(&out, "%x\r\n", n)
		out.Write(body[:n])
		out.WriteString("\r\n")
		body = body[n:]
	}
	out.WriteString("0\r\n\r\n")
	return out.Bytes()
}

// oversizedJSON returns a JSON request body of 100 KiB, over bodyLimit.
func oversizedJSON() []byte {
	return []byte(`{"model":"m","prompt":"` + strings.Repeat("x", 100<<10) + `"}`)
}

// checkBodyLimitShape checks that body is the 413 error in OpenAI's shape
// when openAI is set, else in Ollama's.
func checkBodyLimitShape(t *testing.T, body []byte, openAI bool) {
	t.Helper()
	var message string
	if openAI {
		var e struct {
			Error *struct {
				Message string `json:"message"`
				Type    string `json:"type"`
			} `json:"error"`
		}
		if err := json.Unmarshal(body, &e); err != nil || e.Error == nil {
			t.Fatalf("body %s is not in OpenAI's error shape: %v", body, err)
		}
		message = e.Error.Message
	} else {
		var e struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
			t.Fatalf("body %s is not in Ollama's error shape: %v", body, err)
		}
		message = e.Error
	}
	if !strings.Contains(message, "max_body_bytes") {
		t.Errorf("error message %q, want it to name max_body_bytes", message)
	}
}

// checkAccounted checks that the proxy logged the request of resp as
// POST on route with status 413, and counted it under that route.
func checkAccounted(t *testing.T, p *app.App, log *testenv.LogBuffer, resp *http.Response, route string) {
	t.Helper()
	line := accessLine(t, log, resp.Header.Get("X-Request-Id"))
	if line["method"] != "POST" {
		t.Errorf("access log method %v, want POST", line["method"])
	}
	if line["route"] != route {
		t.Errorf("access log route %v, want %s", line["route"], route)
	}
	if line["status"] != float64(413) {
		t.Errorf("access log status %v, want 413", line["status"])
	}

	metricsResp, err := http.Get(p.URL() + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	metrics := readBody(t, metricsResp)
	series := `llmproxy_requests_total{code="413",model="none",node="none",route="` + route + `"}`
	if !bytes.Contains(metrics, []byte(series)) {
		t.Errorf("/metrics lacks %s, and has these 413 series:\n%s", series, grepLines(metrics, `code="413"`))
	}
}

// grepLines returns the lines of text that contain substr.
func grepLines(text []byte, substr string) string {
	var out []string
	for _, line := range strings.Split(string(text), "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestBodyOverLimitGets413 sends bodies over max_body_bytes as chunked
// data, and as a Content-Length with "Expect: 100-continue", whose client
// sends no body until it gets 100 Continue.
func TestBodyOverLimitGets413(t *testing.T) {
	cases := []struct {
		name, path string
		openAI     bool
		framing    string // the head's last lines
		body       []byte
	}{
		{"chunked /v1", "/v1/chat/completions", true,
			"Transfer-Encoding: chunked\r\n", chunked(oversizedJSON())},
		{"chunked /api", "/api/generate", false,
			"Transfer-Encoding: chunked\r\n", chunked(oversizedJSON())},
		{"expect /v1", "/v1/chat/completions", true,
			"Expect: 100-continue\r\n" + fmt.Sprintf("Content-Length: %d\r\n", 1<<20), nil},
		{"expect /api", "/api/chat", false,
			"Expect: 100-continue\r\n" + fmt.Sprintf("Content-Length: %d\r\n", 1<<20), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, log := startLimitedProxy(t)
			head := "POST " + c.path + " HTTP/1.1\r\n" +
				"Host: " + strings.TrimPrefix(p.URL(), "http://") + "\r\n" +
				"Content-Type: application/json\r\n" + c.framing + "\r\n"

			start := time.Now()
			resp, body := exchange(t, p.URL(), head, c.body)
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("first response %d, want 413 (body %s)", resp.StatusCode, body)
			}
			if c.body == nil && time.Since(start) > time.Second {
				t.Errorf("413 took %v, want it without waiting for a body", time.Since(start))
			}
			checkBodyLimitShape(t, body, c.openAI)
			checkAccounted(t, p, log, resp, c.path)
		})
	}
}

func TestChunkedBodyUnderLimitServed(t *testing.T) {
	p, _ := startLimitedProxy(t)
	head := "POST /api/show HTTP/1.1\r\n" +
		"Host: " + strings.TrimPrefix(p.URL(), "http://") + "\r\n" +
		"Content-Type: application/json\r\n" +
		"Transfer-Encoding: chunked\r\n\r\n"
	resp, body := exchange(t, p.URL(), head, chunked([]byte(`{"model":"m"}`)))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d, want 200 (body %s)", resp.StatusCode, body)
	}
}

func TestExpectContinueUnderLimitServed(t *testing.T) {
	p, _ := startLimitedProxy(t)
	body := `{"model":"m"}`
	head := "POST /api/show HTTP/1.1\r\n" +
		"Host: " + strings.TrimPrefix(p.URL(), "http://") + "\r\n" +
		"Content-Type: application/json\r\n" +
		"Expect: 100-continue\r\n" +
		fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body))

	resp, out := continueExchange(t, p.URL(), head, body)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d, want 200 (body %s)", resp.StatusCode, out)
	}
}

// continueExchange sends head, which asks for 100 Continue, to the proxy
// at baseURL, requires the 100 Continue, then sends body and returns the
// final response and its body.
func continueExchange(t *testing.T, baseURL, head, body string) (*http.Response, []byte) {
	t.Helper()
	addr := strings.TrimPrefix(baseURL, "http://")
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatalf("send head: %v", err)
	}

	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("read interim response: %v", err)
	}
	if resp.StatusCode != http.StatusContinue {
		t.Fatalf("first response %d, want 100 Continue", resp.StatusCode)
	}

	if _, err := io.WriteString(conn, body); err != nil {
		t.Fatalf("send body: %v", err)
	}
	resp, err = http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	return resp, readBody(t, resp)
}

// TestMalformedRequestKeepsRoute sends requests that fasthttp cannot read,
// a bad chunk size and a header line without a colon. The 400 of a bad
// body has the route's error shape and that of a bad head net/http's
// text, and the access log names the request's method and route.
func TestMalformedRequestKeepsRoute(t *testing.T) {
	cases := []struct {
		name, method, path, head string
		body                     []byte
		openAI                   bool
		// text is the whole plain-text body of a head that net/http
		// rejects itself, before any route's error shape applies.
		text string
	}{
		{"bad chunk size on /v1", "POST", "/v1/chat/completions",
			"Transfer-Encoding: chunked\r\n", []byte("zz\r\n{}\r\n0\r\n\r\n"), true, ""},
		{"bad chunk size on /api", "POST", "/api/generate",
			"Transfer-Encoding: chunked\r\n", []byte("-1\r\n{}\r\n0\r\n\r\n"), false, ""},
		{"header without colon", "GET", "/v1/models", "NoColonHere\r\n", nil, false, "400 Bad Request"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, log := startLimitedProxy(t)
			head := c.method + " " + c.path + " HTTP/1.1\r\n" +
				"Host: " + strings.TrimPrefix(p.URL(), "http://") + "\r\n" +
				"X-Request-Id: malformed-1\r\n" + c.head + "\r\n"
			resp, body := exchange(t, p.URL(), head, c.body)
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %d, want 400 (body %s)", resp.StatusCode, body)
			}
			openAIShape := bytes.Contains(body, []byte(`"message":`))
			if c.text != "" {
				if string(body) != c.text {
					t.Errorf("body %q, want net/http's %q", body, c.text)
				}
			} else if openAIShape != c.openAI {
				t.Errorf("body %s: OpenAI's shape %v, want %v", body, openAIShape, c.openAI)
			}
			// fasthttp dropped the head, X-Request-Id included, so the
			// access log line is found by its status.
			line := findAccessLine(t, log, "a request with status 400", func(rec map[string]any) bool {
				return rec["status"] == float64(400)
			})
			if line["method"] != c.method || line["route"] != c.path {
				t.Errorf("access log %v %v, want %s %s", line["method"], line["route"], c.method, c.path)
			}
		})
	}
}

// TestClientLeavesDuringBody closes the connection after part of a body
// of known length. The request is logged and counted as a 400 for an
// incomplete body, not as a malformed request. fasthttp drops the head of such a
// request, so the route is "other".
func TestClientLeavesDuringBody(t *testing.T) {
	p, log := startLimitedProxy(t)
	addr := strings.TrimPrefix(p.URL(), "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Write([]byte("POST /api/chat HTTP/1.1\r\nHost: " + addr + "\r\n" +
		"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + `{"model":"m","mess`))
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()

	line := findAccessLine(t, log, "a request with status 400", func(rec map[string]any) bool {
		return rec["status"] == float64(http.StatusBadRequest)
	})
	if line["route"] != "other" {
		t.Errorf("access log route %v, want other", line["route"])
	}
	if msg, _ := line["error"].(string); !strings.Contains(msg, "client closed the connection") {
		t.Errorf("access log error %q, want it to say that the client closed the connection", msg)
	}
	if codes := requestCodes(t, p, "other"); codes["400"] != 1 {
		t.Errorf("llmproxy_requests_total of route other by code: %v, want one 400", codes)
	}
}

// TestHalfClosedClientReadsIncompleteBodyError sends part of a body of
// known length and closes its side of the connection. It then reads a
// 400 for an incomplete body.
func TestHalfClosedClientReadsIncompleteBodyError(t *testing.T) {
	p, _ := startLimitedProxy(t)
	addr := strings.TrimPrefix(p.URL(), "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = conn.Write([]byte("POST /api/chat HTTP/1.1\r\nHost: " + addr + "\r\n" +
		"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n" + `{"model":"m","mess`))
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read the response: %v", err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d, want 400 (body %s)", resp.StatusCode, body)
	}
	if !strings.Contains(string(body), "request body incomplete") {
		t.Errorf("body %s, want it to say that the request body is incomplete", body)
	}
}

// requestCodes sums llmproxy_requests_total of route by status code.
func requestCodes(t *testing.T, p *app.App, route string) map[string]float64 {
	t.Helper()
	families, err := p.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "llmproxy_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["route"] == route {
				codes[labels["code"]] += m.GetCounter().GetValue()
			}
		}
	}
	return codes
}

// TestIdleConnectionsDropLargeBodies sends a large chunked body on each of
// several keep-alive connections and leaves them idle. The proxy must not
// keep the body buffers for the connections' next requests: the heap
// after a collection stays well under the bodies' total size.
func TestIdleConnectionsDropLargeBodies(t *testing.T) {
	const conns, bodySize = 5, 6 << 20
	node := scriptedNode(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = io.WriteString(w, `{"model":"m","message":{"role":"assistant","content":"ok"},"done":true}`)
	})
	cfg := testenv.Config(t)
	cfg.Nodes = append(cfg.Nodes, config.DefaultNode(node))
	cfg.MaxBodyBytes = 16 << 20
	p := testenv.Proxy(t, cfg)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conns}}
	t.Cleanup(client.CloseIdleConnections)

	heapInUse := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	before := heapInUse()
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			content := strings.Repeat("x", bodySize)
			body := io.MultiReader(strings.NewReader(`{"model":"m","stream":false,"messages":[{"role":"user","content":"`),
				strings.NewReader(content), strings.NewReader(`"}]}`))
			// A reader of unknown length makes the client send the body
			// chunked.
			resp, err := client.Post(p.URL()+"/api/chat", "application/json", body)
			if err != nil {
				t.Errorf("upload %d: %v", i, err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("upload %d: status %d, want 200", i, resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	after := heapInUse()
	// The bodies total 30 MiB. Kept buffers would hold at least that.
	if grown := int64(after) - int64(before); grown > 10<<20 {
		t.Errorf("heap in use grew by %d MiB with %d idle connections, want under 10 MiB",
			grown>>20, conns)
	}
}

// TestDeclaredLengthReservesNoMemory opens connections that declare a
// body of nearly max_body_bytes and send only its first 100 KiB. The proxy
// must allocate about what arrived, not what was declared. The key check
// must come before the body: without a key the client gets 401 from the
// head alone. Once the rest arrives the request is served.
func TestDeclaredLengthReservesNoMemory(t *testing.T) {
	const declared = 60 << 20
	a := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, a)
	cfg.MaxBodyBytes = 64 << 20
	cfg.Auth.Required = true
	cfg.Auth.Keys = []config.Key{limitKey("k1")}
	p := testenv.Proxy(t, cfg)
	addr := strings.TrimPrefix(p.URL(), "http://")

	prompt := strings.Repeat("x", declared-40)
	body := []byte(`{"model":"m","prompt":"` + prompt + `","stream":false}`)
	head := func(key string) string {
		h := fmt.Sprintf("POST /api/generate HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n", addr, len(body))
		if key != "" {
			h += "Authorization: Bearer " + secretOf(key) + "\r\n"
		}
		return h + "\r\n"
	}

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var conns []net.Conn
	for range 3 {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(conn, head("k1")); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(body[:100<<10]); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	// No event marks that the proxy has read the heads, so the test waits.
	// A proxy that allocates the declared length does so on reading the
	// head, well within this time.
	time.Sleep(300 * time.Millisecond)
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Errorf("3 connections that sent 100 KiB of a %d MiB body allocated %d MiB, want under 16 MiB",
			declared>>20, grew>>20)
	}

	// A request without a key is rejected from its head, before fasthttp
	// reads its body, and the client need not send the rest.
	resp, respBody := exchange(t, p.URL(), head(""), body[:8<<10])
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("no key: status %d, body %s, want 401", resp.StatusCode, respBody)
	}

	// The rest of one body arrives, and the node gets all of it.
	if _, err := conns[0].Write(body[100<<10:]); err != nil {
		t.Fatal(err)
	}
	status, got := readResponse(t, bufio.NewReader(conns[0]))
	if status != http.StatusOK {
		t.Fatalf("whole body: status %d, body %.200s", status, got)
	}
	last, ok := a.Server().LastRequest("/api/generate")
	if cl := last.Header.Get("Content-Length"); !ok || cl != fmt.Sprint(len(body)) {
		t.Errorf("the node got Content-Length %q (ok %v), want %d", cl, ok, len(body))
	}
}

// TestMultipartContentTypeReadAsJSON sends a JSON body labelled
// multipart/form-data. Ollama reads every body as JSON whatever its
// Content-Type, so the proxy must forward it unparsed.
func TestMultipartContentTypeReadAsJSON(t *testing.T) {
	p, _ := startLimitedProxy(t)
	body := `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false}`
	req, err := http.NewRequest(http.MethodPost, p.URL()+"/api/chat", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "multipart/form-data; boundary=xx")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, body %s, want 200", resp.StatusCode, got)
	}
	if !bytes.Contains(got, []byte(`"done":true`)) {
		t.Errorf("body %s, want a chat response", got)
	}
}
