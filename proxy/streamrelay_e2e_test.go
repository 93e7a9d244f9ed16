package proxy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// relayCount returns llmproxy_stream_relays_total for relay.
func relayCount(p *app.App, relay string) int {
	return int(testutil.ToFloat64(p.Metrics().StreamRelays.WithLabelValues(relay)))
}

func TestStreamRelayChoice(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{MinTokens: 5, MaxTokens: 5})
	p := testenv.Proxy(t, testenv.Config(t, a))
	chat := `{"model":"m","messages":[{"role":"user","content":"x"}]}`

	readBody(t, post(t, p.URL()+"/api/chat", chat))
	if n := relayCount(p, "event_loop"); n != 1 {
		t.Errorf("HTTP/1.1 stream: event_loop relays %d, want 1", n)
	}

	conn, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST /api/chat HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		len(chat), chat)
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatal(err)
	}
	if n := relayCount(p, "goroutine"); n != 1 {
		t.Errorf("HTTP/1.0 stream: goroutine relays %d, want 1", n)
	}
}

// TestStreamToSlowClientIsComplete streams far more than the client's
// receive buffer to a client that starts reading late, and checks that
// every line arrives whole and in order.
func TestStreamToSlowClientIsComplete(t *testing.T) {
	const tokens = 2000
	a := testenv.Sim(t, "m", ollamasim.Config{MinTokens: tokens, MaxTokens: tokens})
	p := testenv.Proxy(t, testenv.Config(t, a))
	conn, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.(*net.TCPConn).SetReadBuffer(8 << 10); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	body := fmt.Sprintf(`{"model":"m","prompt":"x","options":{"num_predict":%d}}`, tokens)
	fmt.Fprintf(conn, "POST /api/generate HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\n\r\n%s", p.Addr(), len(body), body)
	time.Sleep(300 * time.Millisecond)

	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var lines int
	var last api.GenerateResponse
	for sc.Scan() {
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Fatalf("line %d is not one JSON object: %v: %q", lines+1, err, sc.Bytes())
		}
		if bytes.Contains(sc.Bytes(), []byte(`"error"`)) {
			t.Fatalf("line %d is an error: %s", lines+1, sc.Bytes())
		}
		lines++
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("after %d lines: %v", lines, err)
	}
	if !last.Done {
		t.Fatalf("stream of %d lines ended without its done line", lines)
	}
	if last.EvalCount != tokens {
		t.Errorf("done line reports %d tokens, want %d", last.EvalCount, tokens)
	}
	if lines != tokens+1 {
		t.Errorf("client read %d lines, want %d tokens and the done line", lines, tokens+1)
	}
}

// TestHalfClosedClientGetsNoResponse half-closes the client's side right
// after the request. The proxy takes that as a client that left, as Go's
// net/http does, and must close the connection without a response rather
// than send 200 with an empty body.
func TestHalfClosedClientGetsNoResponse(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{TokensPerSec: 10, MinTokens: 5, MaxTokens: 5})
	p := testenv.Proxy(t, testenv.Config(t, a))
	for _, body := range []string{
		`{"model":"m","prompt":"x","stream":false}`,
		`{"model":"m","prompt":"x"}`,
	} {
		conn, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "POST /api/generate HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
			"Content-Length: %d\r\n\r\n%s", p.Addr(), len(body), body)
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(conn)
		conn.Close()
		if err != nil {
			t.Fatalf("%s: read until close: %v", body, err)
		}
		if len(got) != 0 {
			t.Errorf("%s: half-closed client read %q, want no response", body, got)
		}
	}
}
