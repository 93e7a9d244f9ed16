package proxy_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// answerWithin is how long the tests of this file wait for a response that
// must come from the request head alone. The proxies they start have a
// read_timeout of headReadTimeout, so a proxy that waits for a body
// fails them.
const (
	answerWithin    = 3 * time.Second
	headReadTimeout = 2 * time.Minute
)

// startHeadProxy starts a proxy over one simulated node with a long
// read_timeout and a JSON access log. With keys set, every API request
// needs key k1.
func startHeadProxy(t *testing.T, keys bool) (*app.App, *ollamasim.Running, *testenv.LogBuffer) {
	t.Helper()
	a := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, a)
	cfg.ReadTimeout = headReadTimeout
	if keys {
		cfg.Auth.Required = true
		cfg.Auth.Keys = []config.Key{limitKey("k1")}
	}
	p, log := startLoggedProxy(t, cfg)
	return p, a, log
}

// rawResult is what a raw client read after it sent its bytes.
type rawResult struct {
	resp *http.Response
	body []byte
	// closed is set when the proxy closed the connection after the
	// response, within answerWithin.
	closed bool
}

// sendRaw writes data on a new connection to the proxy at baseURL and
// reads the first response, failing the test when none comes within
// answerWithin. The client keeps its side open, as one that waits for a
// 100 Continue or that has not sent all of its body yet.
func sendRaw(t *testing.T, baseURL, data string) rawResult {
	t.Helper()
	addr := strings.TrimPrefix(baseURL, "http://")
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, data); err != nil {
		t.Fatalf("send request: %v", err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(answerWithin))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no response within %v: %v", answerWithin, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read response body: %v", err)
	}
	_, err = br.ReadByte()
	return rawResult{resp: resp, body: body, closed: errors.Is(err, io.EOF)}
}

// checkClosedUnserved fails the test unless got closed its connection
// after the response and no node served it: no X-LLMProxy-Node, and no
// request on route at the simulator sim.
func checkClosedUnserved(t *testing.T, got rawResult, sim *ollamasim.Running, route string) {
	t.Helper()
	if !got.resp.Close || !got.closed {
		t.Errorf("Connection: close %v, closed after the response %v, want both",
			got.resp.Close, got.closed)
	}
	if node := got.resp.Header.Get("X-LLMProxy-Node"); node != "" {
		t.Errorf("X-LLMProxy-Node %q, want the request to reach no node", node)
	}
	if n := sim.Server().Requests(route); n != 0 {
		t.Errorf("the node got %d requests on %s, want none", n, route)
	}
}

// shapedErrorMessage returns the message of an error body in Ollama's
// shape, or in OpenAI's or Anthropic's when nested is set, and fails the
// test when body has another shape.
func shapedErrorMessage(t *testing.T, body []byte, nested bool) string {
	t.Helper()
	if !nested {
		var e struct {
			Error *string `json:"error"`
		}
		if err := json.Unmarshal(body, &e); err != nil || e.Error == nil {
			t.Fatalf("body %q is not in Ollama's error shape: %v", body, err)
		}
		return *e.Error
	}
	var e struct {
		Error *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == nil {
		t.Fatalf("body %q is not in OpenAI's or Anthropic's error shape: %v", body, err)
	}
	return e.Error.Message
}

// TestHeadRejectedBeforeBody sends requests with a body whose head fails
// the Host, CORS, API key or X-Priority check: with "Expect: 100-continue",
// or with a Content-Length and only the start of the body. Each gets the handler's
// rejection at once, without a 100 Continue, and its connection closes.
// The node gets nothing, and the log and metrics count one request.
func TestHeadRejectedBeforeBody(t *testing.T) {
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	expect := "Expect: 100-continue\r\nContent-Length: 2097152\r\n\r\n"
	partial := "Content-Length: 4000\r\n\r\n" + `{"model":"m","mess`
	cases := []struct {
		name, method, path string
		// host replaces the proxy's address in the Host header.
		host, header, framing string
		status                int
		// message is a part of the error message, "" for an empty body.
		message string
		nested  bool
		// simRoute is the node's route for the request.
		simRoute string
		// metricRoute is the route label of the request's metrics.
		metricRoute string
		// allowOrigin is the Access-Control-Allow-Origin to expect.
		allowOrigin string
	}{
		{name: "blob upload without key", method: "POST", path: "/api/blobs/" + digest,
			framing: expect, status: 401, message: "missing API key",
			simRoute: "/api/blobs/{digest}", metricRoute: "/api/blobs"},
		{name: "unknown key with partial body", method: "POST", path: "/api/chat",
			header: "Authorization: Bearer sk-unknown\r\n", framing: partial, status: 401,
			message: "invalid API key", simRoute: "/api/chat", metricRoute: "/api/chat"},
		{name: "openai without key", method: "POST", path: "/v1/chat/completions",
			framing: expect, status: 401, message: "missing API key", nested: true,
			simRoute: "/v1/chat/completions", metricRoute: "/v1/chat/completions"},
		{name: "anthropic without key", method: "POST", path: "/v1/messages",
			framing: partial, status: 401, message: "missing API key", nested: true,
			simRoute: "/v1/messages", metricRoute: "/v1/messages"},
		{name: "chunked without key", method: "POST", path: "/api/create",
			framing: "Transfer-Encoding: chunked\r\n\r\n400\r\n{\"model\":", status: 401,
			message: "missing API key", simRoute: "/api/create", metricRoute: "/api/create"},
		{name: "allowed origin without key", method: "POST", path: "/api/chat",
			header: "Origin: http://localhost:3000\r\n", framing: expect, status: 401,
			message: "missing API key", simRoute: "/api/chat", metricRoute: "/api/chat",
			allowOrigin: "http://localhost:3000"},
		{name: "unknown priority class", method: "POST", path: "/api/chat",
			header:  "Authorization: Bearer " + secretOf("k1") + "\r\nX-Priority: urgent\r\n",
			framing: partial, status: 400, message: "unknown priority class",
			simRoute: "/api/chat", metricRoute: "/api/chat"},
		{name: "foreign host", method: "POST", path: "/api/chat", host: rebindHost,
			header: "Authorization: Bearer " + secretOf("k1") + "\r\n", framing: expect,
			status: 403, simRoute: "/api/chat", metricRoute: "/api/chat"},
		{name: "foreign origin", method: "POST", path: "/api/generate",
			header:  "Origin: https://evil.example\r\nAuthorization: Bearer " + secretOf("k1") + "\r\n",
			framing: partial, status: 403, simRoute: "/api/generate", metricRoute: "/api/generate"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, sim, log := startHeadProxy(t, true)
			host := c.host
			if host == "" {
				host = strings.TrimPrefix(p.URL(), "http://")
			}
			const requestID = "head-check-1"
			head := c.method + " " + c.path + " HTTP/1.1\r\nHost: " + host + "\r\n" +
				"X-Request-Id: " + requestID + "\r\nContent-Type: application/json\r\n" +
				c.header + c.framing
			got := sendRaw(t, p.URL(), head)

			if got.resp.StatusCode != c.status {
				t.Fatalf("first response %d, want %d (body %q)", got.resp.StatusCode, c.status, got.body)
			}
			if c.message == "" && len(got.body) != 0 {
				t.Errorf("body %q, want it empty", got.body)
			}
			if c.message != "" {
				if msg := shapedErrorMessage(t, got.body, c.nested); !strings.Contains(msg, c.message) {
					t.Errorf("error message %q, want it to contain %q", msg, c.message)
				}
			}
			wantAuth := ""
			if c.status == http.StatusUnauthorized {
				wantAuth = `Bearer realm="llmproxy"`
			}
			if auth := got.resp.Header.Get("WWW-Authenticate"); auth != wantAuth {
				t.Errorf("WWW-Authenticate %q, want %q", auth, wantAuth)
			}
			if origin := got.resp.Header.Get("Access-Control-Allow-Origin"); origin != c.allowOrigin {
				t.Errorf("Access-Control-Allow-Origin %q, want %q", origin, c.allowOrigin)
			}
			if id := got.resp.Header.Get("X-Request-Id"); id != requestID {
				t.Errorf("X-Request-Id %q, want %q", id, requestID)
			}
			checkClosedUnserved(t, got, sim, c.simRoute)
			if n := len(accessRecords(t, log)[requestID]); n != 1 {
				t.Errorf("%d access log lines, want 1", n)
			}
			codes := requestCodes(t, p, c.metricRoute)
			if len(codes) != 1 || codes[fmt.Sprint(c.status)] != 1 {
				t.Errorf("llmproxy_requests_total of route %s by code: %v, want one %d",
					c.metricRoute, codes, c.status)
			}
		})
	}
}

// TestHeadCheckPassedKeepsContinue sends a request with a valid key and
// "Expect: 100-continue": it gets 100 Continue, sends its body and is
// served on a connection that stays open.
func TestHeadCheckPassedKeepsContinue(t *testing.T) {
	p, sim, _ := startHeadProxy(t, true)
	addr := strings.TrimPrefix(p.URL(), "http://")
	body := `{"model":"m"}`
	head := "POST /api/show HTTP/1.1\r\nHost: " + addr + "\r\n" +
		"Authorization: Bearer " + secretOf("k1") + "\r\n" +
		"Content-Type: application/json\r\nExpect: 100-continue\r\n" +
		fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body))

	resp, got := continueExchange(t, p.URL(), head, body)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d, want 200 (body %s)", resp.StatusCode, got)
	}
	if resp.Close {
		t.Error("response has Connection: close, want the connection kept")
	}
	if n := sim.Server().Requests("/api/show"); n != 1 {
		t.Errorf("the node got %d requests on /api/show, want 1", n)
	}
}

// TestMalformedHeadAsGo sends heads that fasthttp accepts or rejects
// otherwise than Go's net/http, which Ollama serves with. Each gets
// net/http's status, status line and plain-text body at once, reaches no
// node, counts as one request and closes its connection. HTTP/1.2 is
// served, as by net/http.
func TestMalformedHeadAsGo(t *testing.T) {
	show := `{"model":"m"}`
	length := fmt.Sprintf("Content-Length: %d\r\n", len(show))
	const unsupportedTE = "Unsupported transfer encoding"
	cases := []struct {
		name, requestLine, header, body string
		status                          int
		// reason is the text after the status code in the status line,
		// and wantBody the whole body, as net/http writes them.
		reason, wantBody string
		// requestID is set when the proxy keeps the head, so that the
		// response and the access log carry the X-Request-Id.
		requestID bool
		// noHost leaves out the Host field.
		noHost bool
	}{
		{name: "space in field name", requestLine: "POST /api/show HTTP/1.1",
			header: "X Custom: 1\r\n" + length, body: show,
			status: 400, reason: "Bad Request: invalid header name",
			wantBody: "400 Bad Request: invalid header name", requestID: true},
		{name: "space before colon", requestLine: "POST /api/show HTTP/1.1",
			header: "X-Custom : 1\r\n" + length, body: show,
			status: 400, reason: "Bad Request: invalid header name",
			wantBody: "400 Bad Request: invalid header name"},
		{name: "no host", requestLine: "POST /api/show HTTP/1.1", header: length, noHost: true,
			body: show, status: 400, reason: "Bad Request: missing required Host header",
			wantBody: "400 Bad Request: missing required Host header"},
		{name: "control byte in value", requestLine: "POST /api/show HTTP/1.1",
			header: "X-Custom: a\x01b\r\n" + length, body: show,
			status: 400, reason: "Bad Request", wantBody: "400 Bad Request"},
		{name: "two hosts", requestLine: "POST /api/show HTTP/1.1",
			header: "Host: localhost\r\nHost: localhost\r\n" + length, body: show,
			status: 400, reason: "Bad Request", wantBody: "400 Bad Request"},
		{name: "HTTP/9.9", requestLine: "POST /api/show HTTP/9.9", header: length, body: show,
			status: 505, reason: "HTTP Version Not Supported: unsupported protocol version",
			wantBody: "505 HTTP Version Not Supported: unsupported protocol version", requestID: true},
		{name: "HTTP/2.0 on /v1", requestLine: "POST /v1/chat/completions HTTP/2.0",
			header: length, body: show, status: 505,
			reason:   "HTTP Version Not Supported: unsupported protocol version",
			wantBody: "505 HTTP Version Not Supported: unsupported protocol version", requestID: true},
		{name: "identity with length", requestLine: "POST /api/show HTTP/1.1",
			header: "Transfer-Encoding: identity\r\n" + length, body: show,
			status: 501, reason: "Not Implemented", wantBody: unsupportedTE, requestID: true},
		// Without the 501, the body is read as a second request.
		{name: "identity without length", requestLine: "POST /api/show HTTP/1.1",
			header: "Transfer-Encoding: identity\r\n",
			body:   "GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n",
			status: 501, reason: "Not Implemented", wantBody: unsupportedTE, requestID: true},
		{name: "gzip", requestLine: "POST /api/show HTTP/1.1",
			header: "Transfer-Encoding: gzip\r\n", body: show,
			status: 501, reason: "Not Implemented", wantBody: unsupportedTE},
		{name: "chunked before gzip", requestLine: "POST /v1/chat/completions HTTP/1.1",
			header: "Transfer-Encoding: chunked, gzip\r\n", body: show,
			status: 501, reason: "Not Implemented", wantBody: unsupportedTE},
		{name: "two fields", requestLine: "POST /api/show HTTP/1.1",
			header: "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", body: "0\r\n\r\n",
			status: 501, reason: "Not Implemented", wantBody: unsupportedTE},
		{name: "quote in host", requestLine: "POST /api/show HTTP/1.1",
			header: "Host: a\"b\r\n" + length, body: show,
			status: 400, reason: "Bad Request: malformed Host header",
			wantBody: "400 Bad Request: malformed Host header", requestID: true},
		{name: "unknown expectation", requestLine: "POST /api/show HTTP/1.1",
			header: "Expect: 200-ok\r\n" + length, body: show,
			status: 417, reason: "Expectation Failed", wantBody: "", requestID: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, sim, log := startHeadProxy(t, false)
			method, target, _ := strings.Cut(c.requestLine, " ")
			target, _, _ = strings.Cut(target, " ")
			const requestID = "malformed-head-1"
			head := c.requestLine + "\r\n"
			if !strings.HasPrefix(c.header, "Host:") && !c.noHost {
				head += "Host: " + strings.TrimPrefix(p.URL(), "http://") + "\r\n"
			}
			head += "X-Request-Id: " + requestID + "\r\nContent-Type: application/json\r\n" +
				c.header + "\r\n"
			got := sendRaw(t, p.URL(), head+c.body)

			if got.resp.StatusCode != c.status {
				t.Fatalf("first response %d, want %d (body %q)", got.resp.StatusCode, c.status, got.body)
			}
			if want := fmt.Sprintf("%d %s", c.status, c.reason); got.resp.Status != want {
				t.Errorf("status line %q, want %q", got.resp.Status, want)
			}
			if string(got.body) != c.wantBody {
				t.Errorf("body %q, want %q", got.body, c.wantBody)
			}
			wantType := "text/plain; charset=utf-8"
			if c.status == http.StatusExpectationFailed {
				wantType = ""
			}
			if ct := got.resp.Header.Get("Content-Type"); ct != wantType {
				t.Errorf("Content-Type %q, want %q", ct, wantType)
			}
			checkClosedUnserved(t, got, sim, target)
			if c.requestID {
				if id := got.resp.Header.Get("X-Request-Id"); id != requestID {
					t.Errorf("X-Request-Id %q, want %q", id, requestID)
				}
				if n := len(accessRecords(t, log)[requestID]); n != 1 {
					t.Errorf("%d access log lines, want 1", n)
				}
			}
			line := findAccessLine(t, log, fmt.Sprintf("a request with status %d", c.status),
				func(rec map[string]any) bool { return rec["status"] == float64(c.status) })
			if line["method"] != method || line["route"] != target {
				t.Errorf("access log %v %v, want %s %s", line["method"], line["route"], method, target)
			}
			codes := requestCodes(t, p, target)
			if len(codes) != 1 || codes[fmt.Sprint(c.status)] != 1 {
				t.Errorf("llmproxy_requests_total of route %s by code: %v, want one %d",
					target, codes, c.status)
			}
		})
	}
}

// TestMinorVersionServedAsGo sends HTTP/1.2, which net/http serves as an
// HTTP/1.x request.
func TestMinorVersionServedAsGo(t *testing.T) {
	p, sim, _ := startHeadProxy(t, false)
	body := `{"model":"m"}`
	got := sendRaw(t, p.URL(), "POST /api/show HTTP/1.2\r\n"+
		"Host: "+strings.TrimPrefix(p.URL(), "http://")+"\r\n"+
		fmt.Sprintf("Content-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))+body)
	if got.resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200 (body %q)", got.resp.StatusCode, got.body)
	}
	if n := sim.Server().Requests("/api/show"); n != 1 {
		t.Errorf("the node got %d requests on /api/show, want 1", n)
	}
}

// TestHeadRejectedBodyStillSent sends large bodies without a key with
// Go's HTTP client, which sends no "Expect: 100-continue" and writes the
// whole body before it reads the response. The client must read the 401,
// not a reset connection.
func TestHeadRejectedBodyStillSent(t *testing.T) {
	p, _, _ := startHeadProxy(t, true)
	body := `{"model":"m","prompt":"` + strings.Repeat("x", 4<<20) + `"}`
	for i := range 5 {
		resp, err := http.Post(p.URL()+"/api/generate", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		got := readBody(t, resp)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("request %d: status %d, want 401 (body %s)", i, resp.StatusCode, got)
		}
	}
}

// TestBodilessRequestGetsNoContinue sends "Expect: 100-continue" on
// requests without a body. net/http sends 100 Continue only before it
// reads a body, so Ollama sends only the final response to such a request.
func TestBodilessRequestGetsNoContinue(t *testing.T) {
	p, _, _ := startHeadProxy(t, false)
	addr := strings.TrimPrefix(p.URL(), "http://")
	requests := []struct{ name, head string }{
		{"GET without length", "GET /api/version HTTP/1.1\r\nHost: " + addr + "\r\nExpect: 100-continue\r\n\r\n"},
		{"POST with length 0", "POST /api/show HTTP/1.1\r\nHost: " + addr +
			"\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n"},
	}
	for _, r := range requests {
		t.Run(r.name, func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatalf("dial %s: %v", addr, err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(answerWithin))
			if _, err := io.WriteString(conn, r.head); err != nil {
				t.Fatalf("send head: %v", err)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("no response within %v: %v", answerWithin, err)
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusContinue {
				t.Fatal("first response 100 Continue, want the final response of a request without a body")
			}
		})
	}
}

// TestUnusedBodyGetsNoContinue sends "Expect: 100-continue" with a body
// to routes that Ollama's router serves without reading the body, and to
// unclean paths, which Go's ServeMux redirects before the router. As
// from net/http, the response comes at once, without a 100 Continue, and
// the connection closes, since the body was not read.
func TestUnusedBodyGetsNoContinue(t *testing.T) {
	p, sim, _ := startHeadProxy(t, false)
	addr := strings.TrimPrefix(p.URL(), "http://")
	cases := []struct {
		name, method, path string
		status             int
	}{
		{"unknown path", "POST", "/nothing", http.StatusNotFound},
		{"wrong method", "PUT", "/api/tags", http.StatusMethodNotAllowed},
		{"trailing slash", "POST", "/api/chat/", http.StatusTemporaryRedirect},
		{"empty segment", "POST", "/api//chat", http.StatusMovedPermanently},
		{"dot segment", "POST", "/api/./chat", http.StatusMovedPermanently},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := sendRaw(t, p.URL(), c.method+" "+c.path+" HTTP/1.1\r\nHost: "+addr+"\r\n"+
				"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n")
			if got.resp.StatusCode != c.status {
				t.Fatalf("first response %d, want %d without a 100 Continue (body %q)",
					got.resp.StatusCode, c.status, got.body)
			}
			if !got.resp.Close || !got.closed {
				t.Errorf("Connection: close %v, closed after the response %v, want both",
					got.resp.Close, got.closed)
			}
		})
	}
	if n := sim.Server().Requests("/api/chat"); n != 0 {
		t.Errorf("the node got %d requests on /api/chat, want none", n)
	}
}
