package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/llmproxy/llmproxy/ollamasim"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testModel is the model of every test node.
const testModel = "llama3:8b"

// chatBody is a streamed /api/chat request for testModel.
const chatBody = `{"model":"llama3:8b","messages":[{"role":"user","content":"Tell me a story."}]}`

// openAIBody is a streamed /v1/chat/completions request with usage.
const openAIBody = `{"model":"llama3:8b","stream":true,"stream_options":{"include_usage":true},` +
	`"messages":[{"role":"user","content":"Tell me a story."}]}`

// testNode is a stampsim server on a loopback port, with its model loaded.
type testNode struct {
	addr string
	url  string
	node *ollamasim.Server
	srv  *server
}

// startNode starts a server for cfg and loads the model through it. A cfg
// without models lists testModel, and one without a token rate streams
// 400 tokens per second. Everything closes when the test ends.
func startNode(t *testing.T, cfg ollamasim.Config) *testNode {
	t.Helper()
	return startNodeWith(t, cfg, func(ln net.Listener) net.Listener { return ln })
}

// startNodeWith starts a node like startNode, serving on the listener that
// wrap returns for a loopback listener.
func startNodeWith(t *testing.T, cfg ollamasim.Config, wrap func(net.Listener) net.Listener) *testNode {
	t.Helper()
	if cfg.Models == nil {
		cfg.Models = []ollamasim.ModelSpec{{Name: testModel}}
	}
	if cfg.TokensPerSec == 0 {
		cfg.TokensPerSec = 400
	}
	node := ollamasim.New(cfg)
	srv := newServer(node, cfg, slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.serve(wrap(ln)) }()
	t.Cleanup(func() {
		srv.close()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
		node.Close()
	})

	n := &testNode{addr: ln.Addr().String(), url: "http://" + ln.Addr().String(), node: node, srv: srv}
	resp := n.do(t, http.MethodPost, "/api/generate",
		`{"model":"llama3:8b","prompt":"warm","stream":false}`)
	if resp.status != http.StatusOK {
		t.Fatalf("load model: status %d: %s", resp.status, resp.body)
	}
	return n
}

// do sends one request on a new connection and reads the response.
func (n *testNode) do(t *testing.T, method, path, body string) *rawResponse {
	t.Helper()
	c := n.dial(t)
	defer c.close()
	return c.roundTrip(t, rawRequest(method, path, n.addr, body, ""))
}

// mergedStats returns the counters of GET /_sim/stats.
func (n *testNode) mergedStats(t *testing.T) ollamasim.Stats {
	t.Helper()
	resp := n.do(t, http.MethodGet, "/_sim/stats", "")
	var st ollamasim.Stats
	if err := json.Unmarshal(resp.body, &st); err != nil {
		t.Fatalf("decode stats %q: %v", resp.body, err)
	}
	return st
}

// waitStats polls GET /_sim/stats until cond holds, for at most 5 seconds.
func (n *testNode) waitStats(t *testing.T, what string, cond func(ollamasim.Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := n.mergedStats(t)
		if cond(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; stats: %+v", what, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawRequest returns an HTTP/1.1 request with a JSON body, or without a
// body when body is empty. extra holds more header lines, each ending in
// CRLF.
func rawRequest(method, path, host, body, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n%s", method, path, host, extra)
	if body != "" {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	return b.String()
}

// clientConn is a raw client connection.
type clientConn struct {
	nc net.Conn
	br *bufio.Reader
}

func (n *testNode) dial(t *testing.T) *clientConn {
	t.Helper()
	return dialAddr(t, n.addr)
}

func dialAddr(t *testing.T, addr string) *clientConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	return &clientConn{nc: nc, br: bufio.NewReader(nc)}
}

func (c *clientConn) close() { c.nc.Close() }

// rawResponse is a response as it came over the wire.
type rawResponse struct {
	statusLine string
	status     int
	header     []string // the header lines in order, without CRLF
	chunks     []rawChunk
	body       []byte // the body, chunks joined
	chunked    bool
}

// rawChunk is one chunk of a chunked body, or one line of a body that ends
// with the connection.
type rawChunk struct {
	data     []byte
	received time.Time
}

// headerValue returns the value of the first header line called name.
func (r *rawResponse) headerValue(name string) (string, bool) {
	for _, line := range r.header {
		k, v, _ := strings.Cut(line, ": ")
		if strings.EqualFold(k, name) {
			return v, true
		}
	}
	return "", false
}

// headerNames returns the names of the header lines in order.
func (r *rawResponse) headerNames() []string {
	names := make([]string, len(r.header))
	for i, line := range r.header {
		names[i], _, _ = strings.Cut(line, ":")
	}
	return names
}

func (c *clientConn) roundTrip(t *testing.T, request string) *rawResponse {
	t.Helper()
	c.send(t, request)
	return c.readResponse(t, strings.HasPrefix(request, "HEAD "))
}

func (c *clientConn) send(t *testing.T, request string) {
	t.Helper()
	if _, err := io.WriteString(c.nc, request); err != nil {
		t.Fatalf("send request: %v", err)
	}
}

// readResponse reads a whole response, framed by Content-Length, chunked
// encoding or the end of the connection.
func (c *clientConn) readResponse(t *testing.T, head bool) *rawResponse {
	t.Helper()
	r := c.readHead(t)
	if head || r.status == http.StatusNoContent || r.status == http.StatusNotModified {
		return r
	}
	for {
		chunk, ok := c.nextChunk(t, r)
		if !ok {
			return r
		}
		r.chunks = append(r.chunks, chunk)
		r.body = append(r.body, chunk.data...)
	}
}

// readHead reads the status line and the header.
func (c *clientConn) readHead(t *testing.T) *rawResponse {
	t.Helper()
	r := &rawResponse{statusLine: c.readLine(t)}
	fields := strings.Fields(r.statusLine)
	if len(fields) < 2 {
		t.Fatalf("malformed status line %q", r.statusLine)
	}
	r.status, _ = strconv.Atoi(fields[1])
	for {
		line := c.readLine(t)
		if line == "" {
			break
		}
		r.header = append(r.header, line)
	}
	te, _ := r.headerValue("Transfer-Encoding")
	r.chunked = te == "chunked"
	return r
}

// nextChunk reads the next piece of the body: a chunk, the rest of a
// Content-Length body, or a line of a body that ends with the connection.
// It returns false at the end of the body.
func (c *clientConn) nextChunk(t *testing.T, r *rawResponse) (rawChunk, bool) {
	t.Helper()
	if r.chunked {
		size, err := strconv.ParseUint(c.readLine(t), 16, 32)
		if err != nil {
			t.Fatalf("malformed chunk size: %v", err)
		}
		if size == 0 {
			if trailer := c.readLine(t); trailer != "" {
				t.Fatalf("unexpected trailer %q", trailer)
			}
			return rawChunk{}, false
		}
		data := make([]byte, size)
		if _, err := io.ReadFull(c.br, data); err != nil {
			t.Fatalf("read chunk: %v", err)
		}
		received := time.Now()
		if crlf := c.readLine(t); crlf != "" {
			t.Fatalf("chunk of %d bytes is followed by %q, want CRLF", size, crlf)
		}
		return rawChunk{data: data, received: received}, true
	}
	if length, ok := r.headerValue("Content-Length"); ok {
		if len(r.chunks) > 0 {
			return rawChunk{}, false
		}
		n, _ := strconv.Atoi(length)
		data := make([]byte, n)
		if _, err := io.ReadFull(c.br, data); err != nil {
			t.Fatalf("read body: %v", err)
		}
		return rawChunk{data: data, received: time.Now()}, n > 0
	}
	line, err := c.br.ReadBytes('\n')
	if len(line) == 0 && err == io.EOF {
		return rawChunk{}, false
	}
	if err != nil && err != io.EOF {
		t.Fatalf("read body: %v", err)
	}
	return rawChunk{data: line, received: time.Now()}, true
}

func (c *clientConn) readLine(t *testing.T) string {
	t.Helper()
	line, err := c.br.ReadString('\n')
	if err != nil {
		t.Fatalf("read line: %v (got %q)", err, line)
	}
	if !strings.HasSuffix(line, "\r\n") {
		t.Fatalf("line %q does not end with CRLF", line)
	}
	return strings.TrimSuffix(line, "\r\n")
}

// expectClosed checks that the server closed the connection.
func (c *clientConn) expectClosed(t *testing.T) {
	t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := c.br.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read after the response = %d bytes, %v, want EOF", n, err)
	}
}

// ndjsonLines returns the lines of an NDJSON body.
func ndjsonLines(body []byte) [][]byte {
	return bytes.SplitAfter(bytes.TrimSuffix(body, []byte("\n")), []byte("\n"))
}

// jsonKeys returns the keys of a JSON object in order, with nested keys as
// "outer.inner" and array elements' keys as "outer[].inner".
func jsonKeys(t *testing.T, data []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	var keys []string
	var walk func(prefix string)
	walk = func(prefix string) {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("decode %q: %v", data, err)
		}
		switch tok {
		case json.Delim('{'):
			for dec.More() {
				keyTok, err := dec.Token()
				if err != nil {
					t.Fatalf("decode %q: %v", data, err)
				}
				key := prefix + keyTok.(string)
				keys = append(keys, key)
				walk(key + ".")
			}
			dec.Token()
		case json.Delim('['):
			for dec.More() {
				walk(strings.TrimSuffix(prefix, ".") + "[].")
			}
			dec.Token()
		}
	}
	walk("")
	return keys
}

// referenceServer serves a plain ollamasim node with net/http, the server
// stampsim's fallback imitates. It loads testModel.
func referenceServer(t *testing.T, cfg ollamasim.Config) (*httptest.Server, *ollamasim.Server) {
	t.Helper()
	if cfg.Models == nil {
		cfg.Models = []ollamasim.ModelSpec{{Name: testModel}}
	}
	if cfg.TokensPerSec == 0 {
		cfg.TokensPerSec = 400
	}
	node := ollamasim.New(cfg)
	ts := httptest.NewServer(node)
	t.Cleanup(func() {
		ts.Close()
		node.Close()
	})
	c := dialAddr(t, ts.Listener.Addr().String())
	defer c.close()
	resp := c.roundTrip(t, rawRequest(http.MethodPost, "/api/generate", ts.Listener.Addr().String(),
		`{"model":"llama3:8b","prompt":"warm","stream":false}`, ""))
	if resp.status != http.StatusOK {
		t.Fatalf("load model on the reference node: status %d", resp.status)
	}
	return ts, node
}

// waitUntil polls cond every millisecond for at most 5 seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(time.Millisecond):
		}
	}
}
