package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// writeTimeoutMessage is the log message of a connection closed because
// its client did not take a response in time.
const writeTimeoutMessage = "client did not read the response in time " +
	"(write_timeout, or upstream.idle on a stream), closing the connection"

// bigEmbed is an embedding model whose vectors have 65536 dimensions, so
// that bigEmbedBody gets a response of about 10 MB. That is more than the
// proxy's socket send buffer takes (at most 4 MiB with Linux's default
// tcp_wmem), so sending it to a client with a small receive buffer waits
// for the client to read.
var bigEmbed = ollamasim.ModelSpec{Name: "big-embed", Embedding: true, EmbeddingLength: 1 << 16}

// bigEmbedBody returns an /api/embed request body with 12 inputs.
func bigEmbedBody() string {
	inputs := make([]string, 12)
	for i := range inputs {
		inputs[i] = fmt.Sprintf("%q", fmt.Sprint("input ", i))
	}
	return `{"model":"big-embed","input":[` + strings.Join(inputs, ",") + `]}`
}

// writeTimeoutConfig returns the configuration of a proxy in front of sim
// with the given write_timeout. The cache is off, which spares the proxy
// from parsing the large embeddings under the race detector.
func writeTimeoutConfig(t *testing.T, sim *ollamasim.Running, writeTimeout time.Duration) *config.Config {
	t.Helper()
	cfg := testenv.Config(t, sim)
	cfg.WriteTimeout = writeTimeout
	cfg.Cache.Enabled = new(false)
	return cfg
}

// dialSmallBuffer connects to addr with a small receive buffer, so that
// the proxy's writes wait on the client's reads early.
func dialSmallBuffer(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	tcp := conn.(*net.TCPConn)
	if err := tcp.SetReadBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	return tcp
}

// sendRequest writes a keep-alive request with body to conn. proto is
// "HTTP/1.1" or "HTTP/1.0".
func sendRequest(t *testing.T, conn net.Conn, proto, method, path, body string) {
	t.Helper()
	keepAlive := ""
	if proto == "HTTP/1.0" {
		keepAlive = "Connection: keep-alive\r\n"
	}
	_, err := fmt.Fprintf(conn, "%s %s %s\r\nHost: %s\r\n%sContent-Type: application/json\r\n"+
		"Content-Length: %d\r\n\r\n%s", method, path, proto, conn.RemoteAddr(), keepAlive, len(body), body)
	if err != nil {
		t.Fatalf("send %s %s: %v", method, path, err)
	}
}

// writeTimeouts returns the number of write timeouts of client logged so
// far.
func writeTimeouts(t *testing.T, logs *testenv.LogBuffer, client string) int {
	t.Helper()
	n := 0
	for _, c := range writeTimeoutClients(t, logs) {
		if c == client {
			n++
		}
	}
	return n
}

// writeTimeoutClients returns the client addresses of the write timeouts
// logged so far.
func writeTimeoutClients(t *testing.T, logs *testenv.LogBuffer) []string {
	t.Helper()
	type record struct {
		Msg    string `json:"msg"`
		Level  string `json:"level"`
		Client string `json:"client"`
	}
	var clients []string
	for _, rec := range testenv.Records[record](t, logs) {
		if rec.Msg != writeTimeoutMessage {
			continue
		}
		if rec.Level != slog.LevelInfo.String() {
			t.Errorf("write timeout logged at %s, want INFO", rec.Level)
		}
		clients = append(clients, rec.Client)
	}
	return clients
}

// expectCut sends a request for a large response on conn, reads nothing
// until the proxy logs the write timeout of conn, and then checks that
// the connection ends before the response does.
func expectCut(t *testing.T, conn *net.TCPConn, br *bufio.Reader, logs *testenv.LogBuffer) {
	t.Helper()
	client := conn.LocalAddr().String()
	sendRequest(t, conn, "HTTP/1.1", "POST", "/api/embed", bigEmbedBody())
	testenv.WaitFor(t, 20*time.Second, "the write timeout of "+client+" in the log", func() bool {
		return writeTimeouts(t, logs, client) > 0
	})
	if n := writeTimeouts(t, logs, client); n != 1 {
		t.Errorf("write timeout of %s logged %d times, want once", client, n)
	}

	// The bytes still in the kernel's buffers arrive, then the connection
	// ends short of the response's length.
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read the response head: %v", err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("read the whole body of %d bytes from a connection closed by write_timeout", n)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection stayed open after the write timeout: %v", err)
	}
	if n >= resp.ContentLength {
		t.Errorf("read %d bytes, want fewer than the %d of the response", n, resp.ContentLength)
	}
}

// TestUnreadResponseClosesConnection sends a request whose large response
// the client never reads, with write_timeout short from the start or
// shortened by a reload.
func TestUnreadResponseClosesConnection(t *testing.T) {
	const short = 300 * time.Millisecond
	cases := []struct {
		name string
		// start is write_timeout at start. Unless it is short, a reload
		// sets the short one before the request.
		start time.Duration
	}{
		{"configured", short},
		{"reloaded", 5 * time.Minute},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sim := testenv.Sim(t, "", ollamasim.Config{Models: []ollamasim.ModelSpec{bigEmbed}})
			cfg := writeTimeoutConfig(t, sim, tc.start)
			p, logs := testenv.JSONProxy(t, cfg, slog.LevelInfo)
			if tc.start != short {
				next := writeTimeoutConfig(t, sim, short)
				reloadProxy(t, p, next)
				if strings.Contains(logs.String(), "take effect only after a restart") {
					t.Errorf("a reload of write_timeout logged the restart warning: %s", logs)
				}
			}

			conn := dialSmallBuffer(t, p.Addr())
			expectCut(t, conn, bufio.NewReader(conn), logs)
			if clients := writeTimeoutClients(t, logs); len(clients) != 1 {
				t.Errorf("write timeouts logged for %v, want one", clients)
			}
			if got := testutil.ToFloat64(p.Metrics().WriteTimeouts); got != 1 {
				t.Errorf("llmproxy_client_write_timeouts_total = %v, want 1", got)
			}
			// The request was counted once, when the handler returned.
			m := p.Metrics().Requests.WithLabelValues("/api/embed", "big-embed:latest", "n0", "200")
			if got := testutil.ToFloat64(m); got != 1 {
				t.Errorf("requests counted %v, want 1", got)
			}
		})
	}
}

func reloadProxy(t *testing.T, p *app.App, cfg *config.Config) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("invalid reload config: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Reload(ctx, cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
}

// TestSlowReaderGetsWholeResponse reads a large response in small steps,
// well within write_timeout of its first byte. The node takes longer than
// write_timeout to respond, which does not count. Then the client stops
// reading the next response on the connection.
func TestSlowReaderGetsWholeResponse(t *testing.T) {
	sim := testenv.Sim(t, "", ollamasim.Config{
		Models: []ollamasim.ModelSpec{bigEmbed},
		Faults: ollamasim.Faults{FirstByteDelay: 2500 * time.Millisecond},
	})
	cfg := writeTimeoutConfig(t, sim, 2*time.Second)
	p, logs := testenv.JSONProxy(t, cfg, slog.LevelInfo)

	conn := dialSmallBuffer(t, p.Addr())
	br := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	sendRequest(t, conn, "HTTP/1.1", "POST", "/api/embed", bigEmbedBody())
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read the response head: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	// About 40 reads with a pause after each, so the proxy waits on the
	// client many times.
	var n int64
	buf := make([]byte, 256<<10)
	for n < resp.ContentLength {
		k, err := io.ReadFull(resp.Body, buf)
		n += int64(k)
		if err != nil && n < resp.ContentLength {
			t.Fatalf("read %d of %d bytes: %v", n, resp.ContentLength, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp.Body.Close()
	if clients := writeTimeoutClients(t, logs); len(clients) != 0 {
		t.Fatalf("write timeouts logged for %v, want none", clients)
	}
	if got := testutil.ToFloat64(p.Metrics().WriteTimeouts); got != 0 {
		t.Errorf("llmproxy_client_write_timeouts_total = %v after a slow but whole read, want 0", got)
	}

	// The next response on the connection has a deadline of its own, and
	// the client that stops reading it loses the connection.
	if err := sim.Server().SetFaults(ollamasim.Faults{}); err != nil {
		t.Fatal(err)
	}
	expectCut(t, conn, br, logs)
}

// TestStreamOutlivesWriteTimeout sends a stream that lasts longer than
// write_timeout right after a non-streamed response on the same
// connection, whose write deadline must not cut the stream.
func TestStreamOutlivesWriteTimeout(t *testing.T) {
	const writeTimeout = 300 * time.Millisecond
	// Eight tokens at ten a second: each stream lasts about 0.8 s.
	sim := testenv.Sim(t, "m", ollamasim.Config{
		TokensPerSec: 10, MinTokens: 8, MaxTokens: 8,
		Models: []ollamasim.ModelSpec{bigEmbed},
	})
	cfg := writeTimeoutConfig(t, sim, writeTimeout)
	p, logs := testenv.JSONProxy(t, cfg, slog.LevelInfo)

	chat := `{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true}`
	cases := []struct {
		name, proto, path, last string
	}{
		{"NDJSON", "HTTP/1.1", "/api/chat", `"done":true`},
		{"SSE", "HTTP/1.1", "/v1/chat/completions", "data: [DONE]"},
		// The proxy takes over an HTTP/1.0 connection to stream.
		{"NDJSON over HTTP/1.0", "HTTP/1.0", "/api/chat", `"done":true`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn := dialSmallBuffer(t, p.Addr())
			_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
			br := bufio.NewReader(conn)

			sendRequest(t, conn, tc.proto, "GET", "/api/tags", "")
			if status, body := readResponse(t, br); status != http.StatusOK {
				t.Fatalf("/api/tags before the stream: status %d, body %s", status, body)
			}

			start := time.Now()
			sendRequest(t, conn, tc.proto, "POST", tc.path, chat)
			status, body := readResponse(t, br)
			took := time.Since(start)
			if status != http.StatusOK {
				t.Fatalf("stream: status %d, body %s", status, body)
			}
			lines := strings.Split(strings.TrimSpace(string(body)), "\n")
			if !strings.Contains(lines[len(lines)-1], tc.last) {
				t.Errorf("stream's last line lacks %s: %s", tc.last, body)
			}
			if strings.Contains(string(body), `"error"`) {
				t.Errorf("stream carries an error: %s", body)
			}
			if took <= writeTimeout {
				t.Fatalf("stream took %v, want longer than write_timeout %v", took, writeTimeout)
			}

			if n := writeTimeouts(t, logs, conn.LocalAddr().String()); n != 0 {
				t.Fatalf("%d write timeouts logged during the stream", n)
			}
			if tc.proto == "HTTP/1.0" {
				return // the stream's end closed the connection
			}
			// The stream left no deadline, and took none away: the next
			// response has its own.
			expectCut(t, conn, br, logs)
		})
	}
}

// readResponse reads a whole response from br and fails the test when
// the connection ends before the response does.
func readResponse(t *testing.T, br *bufio.Reader) (int, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read a response head: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read the body after %d bytes (%q): %v", len(body), body, err)
	}
	return resp.StatusCode, body
}
