package proxy

import (
	"bufio"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// readResponseHead parses a raw response head as the upstream reads it
// from a node.
func readResponseHead(tb testing.TB, head string) *fasthttp.Response {
	tb.Helper()
	resp := &fasthttp.Response{}
	resp.SkipBody = true
	if err := resp.Header.Read(bufio.NewReader(strings.NewReader(head))); err != nil {
		tb.Fatal(err)
	}
	return resp
}

// BenchmarkRelayHeaders copies a typical Ollama response head, which has
// no Connection header listing other fields, to the client's response.
func BenchmarkRelayHeaders(b *testing.B) {
	src := readResponseHead(b, "HTTP/1.1 200 OK\r\n"+
		"Content-Type: application/json; charset=utf-8\r\n"+
		"Date: Sat, 05 Dec 2026 13:00:00 GMT\r\n"+
		"Content-Length: 320\r\n"+
		"Vary: Origin\r\n\r\n")
	var dst fasthttp.ResponseHeader
	b.ReportAllocs()
	for b.Loop() {
		dst.Reset()
		copyResponseHeaders(&dst, &src.Header)
	}
}

// TestCopyResponseHeadersAllocs checks that a head without a Connection
// header that names other fields is copied without allocation.
func TestCopyResponseHeadersAllocs(t *testing.T) {
	src := readResponseHead(t, "HTTP/1.1 200 OK\r\n"+
		"Content-Type: application/x-ndjson\r\n"+
		"Connection: keep-alive\r\n"+
		"Vary: Origin\r\n"+
		"Transfer-Encoding: chunked\r\n\r\n")
	var dst fasthttp.ResponseHeader
	copyResponseHeaders(&dst, &src.Header)
	if got := string(dst.Peek("Vary")); got != "Origin" {
		t.Errorf("Vary = %q, want %q", got, "Origin")
	}
	allocs := testing.AllocsPerRun(100, func() {
		dst.Reset()
		copyResponseHeaders(&dst, &src.Header)
	})
	if allocs != 0 {
		t.Errorf("copyResponseHeaders allocated %v times per call, want 0", allocs)
	}
}
