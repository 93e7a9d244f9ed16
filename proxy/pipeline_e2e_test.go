package proxy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// TestPipelinedRequestIsServed sends a second request on the connection
// while the first still waits for the node, which is when the proxy
// watches the connection for the client leaving. Both requests must be
// served, the second one unchanged.
func TestPipelinedRequestIsServed(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 10, MinTokens: 5, MaxTokens: 5})
	p := testenv.Proxy(t, testenv.Config(t, a))
	conn, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))

	body := `{"model":"m","prompt":"x","stream":false}`
	request := fmt.Sprintf("POST /api/generate HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\n\r\n%s", p.Addr(), len(body), body)
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	// The generation takes half a second, and the watch starts after 20 ms.
	time.Sleep(150 * time.Millisecond)
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}

	br := bufio.NewReader(conn)
	for i := 1; i <= 2; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("response %d body: %v", i, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Errorf("response %d: status %d, body %s", i, resp.StatusCode, got)
		}
		if !bytes.Contains(got, []byte(`"done":true`)) {
			t.Errorf("response %d: body %s, want a complete generate response", i, got)
		}
	}
}
