package proxy_test

import (
	"fmt"
	"net"
	"net/http"
	"testing"
)

// hopResponseHead is the head of a node response that names X-Foo and
// X-Bar as hop-by-hop in two Connection headers, X-Bar before the header
// that names it, and sends other hop-by-hop fields besides.
const hopResponseHead = "HTTP/1.1 200 OK\r\n" +
	"X-Bar: hop\r\n" +
	"Connection: keep-alive, X-Foo\r\n" +
	"Connection: x-bar\r\n" +
	"X-Foo: hop\r\n" +
	"Keep-Alive: timeout=5\r\n" +
	"Proxy-Authenticate: Basic realm=\"node\"\r\n" +
	"Upgrade: h2c\r\n" +
	"X-Kept: end-to-end\r\n"

// TestResponseHopHeadersDropped checks that the client never gets the
// node's hop-by-hop response fields, nor the fields its Connection headers
// name, on a plain and on a streamed response, and still gets the others.
func TestResponseHopHeadersDropped(t *testing.T) {
	doneLine := `{"model":"m","response":"hi","done":true,"done_reason":"stop"}` + "\n"
	tests := []struct {
		name, response string
	}{
		{"plain", hopResponseHead + "Content-Type: application/json; charset=utf-8\r\n" +
			fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(doneLine), doneLine)},
		{"streamed", hopResponseHead + "Content-Type: application/x-ndjson\r\n" +
			"Transfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(doneLine), doneLine)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node := startRawNode(t, &rawNode{respond: func(conn net.Conn, _ int, _ []byte) bool {
				_, err := fmt.Fprint(conn, tt.response)
				return err == nil
			}})
			p := proxyForRaw(t, node)
			resp := post(t, p.URL()+"/api/generate", `{"model":"m","prompt":"p"}`)
			body := readBody(t, resp)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200; body %s", resp.StatusCode, body)
			}
			if string(body) != doneLine {
				t.Errorf("body %q, want %q", body, doneLine)
			}
			for _, name := range []string{"X-Foo", "X-Bar", "Keep-Alive", "Proxy-Authenticate", "Upgrade"} {
				if v, ok := resp.Header[name]; ok {
					t.Errorf("client got hop-by-hop header %s: %q", name, v)
				}
			}
			if got := resp.Header.Get("X-Kept"); got != "end-to-end" {
				t.Errorf("X-Kept = %q, want %q", got, "end-to-end")
			}
		})
	}
}
