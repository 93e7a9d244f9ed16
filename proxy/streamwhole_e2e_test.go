package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	openai "github.com/sashabaranov/go-openai"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
)

// streamFormat is a stream format whose lines or events the proxy relays
// only whole.
type streamFormat struct {
	name, path, body string
	contentType      string
	// units are three whole lines or events of the node's stream.
	units []string
	// partLen is the length of the start of units[2] that a node sends
	// before it fails or pauses.
	partLen int
	// errorMessage returns the message of rest, which must be one error
	// line or event and nothing else.
	errorMessage func(t *testing.T, rest string) string
}

// openAIChunk is one event of a streamed /v1/chat/completions.
func openAIChunk(content string) string {
	return `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",` +
		`"choices":[{"index":0,"delta":{"role":"assistant","content":"` + content + `"},"finish_reason":null}]}` + "\n\n"
}

// anthropicDelta is one text event of a streamed /v1/messages.
func anthropicDelta(text string) string {
	return "event: content_block_delta\ndata: " +
		`{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"` + text + `"}}` + "\n\n"
}

// streamFormats are NDJSON and the two SSE formats. The part of the third
// unit ends mid-line on NDJSON and /v1/messages, and on
// /v1/chat/completions after the data line, where only the blank line
// that ends the event is missing.
var streamFormats = []streamFormat{
	{
		name: "ndjson", path: "/api/chat", contentType: "application/x-ndjson",
		body:    strings.Replace(chatBody, `"stream":false`, `"stream":true`, 1),
		units:   []string{chatLine("one", false), chatLine("two", false), chatLine("three", false)},
		partLen: len(chatLine("three", false)) / 2,
		errorMessage: func(t *testing.T, rest string) string {
			t.Helper()
			line, ok := strings.CutSuffix(rest, "\n")
			if !ok || strings.Contains(line, "\n") {
				t.Fatalf("after the whole lines %q, want one error line", rest)
			}
			dec := json.NewDecoder(strings.NewReader(line))
			dec.DisallowUnknownFields()
			var e struct {
				Error string `json:"error"`
			}
			if err := dec.Decode(&e); err != nil {
				t.Fatalf("error line %q is not Ollama's error shape: %v", line, err)
			}
			return e.Error
		},
	},
	{
		name: "openai", path: "/v1/chat/completions", contentType: "text/event-stream",
		body:    strings.Replace(chatBody, `"stream":false`, `"stream":true`, 1),
		units:   []string{openAIChunk("one"), openAIChunk("two"), openAIChunk("three")},
		partLen: len(openAIChunk("three")) - 1,
		errorMessage: func(t *testing.T, rest string) string {
			t.Helper()
			data, ok := strings.CutPrefix(rest, "data: ")
			if !ok {
				t.Fatalf("after the whole events %q, want an error event", rest)
			}
			data, ok = strings.CutSuffix(data, "\n\n")
			if !ok || strings.Contains(data, "\n") {
				t.Fatalf("error event %q, want one data line and a blank line", rest)
			}
			var e struct {
				Error *struct {
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(data), &e); err != nil || e.Error == nil {
				t.Fatalf("error event data %q is not OpenAI's error shape (%v)", data, err)
			}
			return e.Error.Message
		},
	},
	{
		name: "anthropic", path: "/v1/messages", contentType: "text/event-stream",
		body:    strings.Replace(messagesBody, "{", `{"stream":true,`, 1),
		units:   []string{anthropicDelta("one"), anthropicDelta("two"), anthropicDelta("three")},
		partLen: len("event: content_block_delta\ndata: {"),
		errorMessage: func(t *testing.T, rest string) string {
			t.Helper()
			data, ok := strings.CutPrefix(rest, "event: error\ndata: ")
			if !ok {
				t.Fatalf("after the whole events %q, want an error event", rest)
			}
			data, ok = strings.CutSuffix(data, "\n\n")
			if !ok || strings.Contains(data, "\n") {
				t.Fatalf("error event %q, want one data line and a blank line", rest)
			}
			return decodeAnthropicError(t, []byte(data)).Error.Message
		},
	},
}

// chunkedHeadOf is the head of a chunked response of contentType.
func chunkedHeadOf(contentType string) string {
	return "HTTP/1.1 200 OK\r\nContent-Type: " + contentType + "\r\nTransfer-Encoding: chunked\r\n\r\n"
}

// wholeProxy starts a proxy with upstream.idle idle in front of a node
// named "cutter" that runs script on each request's connection.
func wholeProxy(t *testing.T, idle time.Duration, script func(conn net.Conn)) *app.App {
	t.Helper()
	cfg := testenv.Config(t)
	nc := config.DefaultNode(hijackedNode(t, script))
	nc.Name = "cutter"
	cfg.Nodes = append(cfg.Nodes, nc)
	cfg.Upstream.Idle = idle
	return testenv.Proxy(t, cfg)
}

// openStream posts body to path over HTTP/1.1 or HTTP/1.0 (see
// postStream) and returns a channel that carries what each read of the
// response body returns. The channel closes at the end of the body.
func openStream(t *testing.T, addr, path, body string, http10 bool) <-chan string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))

	proto := "HTTP/1.1"
	if http10 {
		proto = "HTTP/1.0"
	}
	fmt.Fprintf(conn, "POST %s %s\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		path, proto, addr, len(body), body)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s: read response head: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: status %d, want 200", path, resp.StatusCode)
	}

	reads := make(chan string, 64)
	go func() {
		defer close(reads)
		buf := make([]byte, 64<<10)
		for {
			n, err := resp.Body.Read(buf)
			if n > 0 {
				reads <- string(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	return reads
}

// readAtLeast returns what reads carries until it has n bytes or closes.
func readAtLeast(reads <-chan string, n int) string {
	var got strings.Builder
	for got.Len() < n {
		s, ok := <-reads
		if !ok {
			break
		}
		got.WriteString(s)
	}
	return got.String()
}

// readToEnd returns what reads carries until it closes.
func readToEnd(reads <-chan string) string { return readAtLeast(reads, math.MaxInt) }

// chunkCut returns unit framed as one chunk and cut after its first n
// bytes of payload.
func chunkCut(unit string, n int) string {
	return chunk(unit)[:len(fmt.Sprintf("%x\r\n", len(unit)))+n]
}

// releaseOnce returns a channel and a function that closes it once, also
// at the end of the test, so that a node waiting on it never outlives
// the test.
func releaseOnce(t *testing.T) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	release := sync.OnceFunc(func() { close(ch) })
	t.Cleanup(release)
	return ch, release
}

// TestStreamCutDropsPartUnit has a node send two whole lines or events,
// then part of a third, and then fail. The client must get the two whole
// ones and the proxy's error right after them, on both relays.
func TestStreamCutDropsPartUnit(t *testing.T) {
	cuts := []struct {
		name string
		// part frames the start of the node's third unit: cut inside its
		// chunk, or as a chunk of its own.
		part     func(unit string, n int) string
		midChunk bool
		// fail ends the node's side, after which its connection closes.
		fail func(conn net.Conn)
		// message is the end of the proxy's error message.
		message string
	}{
		{
			name:     "close mid-chunk",
			part:     chunkCut,
			midChunk: true,
			fail:     func(net.Conn) {},
			// Both relays name a close in the same words.
			message: "node closed the connection before the response body was complete",
		},
		{
			name:    "close after chunk",
			part:    func(unit string, n int) string { return chunk(unit[:n]) },
			fail:    func(net.Conn) {},
			message: "node closed the connection before the response body was complete",
		},
		{
			name: "reset",
			part: func(unit string, n int) string { return chunk(unit[:n]) },
			fail: func(conn net.Conn) {
				// Closing with a zero linger sends a TCP reset.
				_ = conn.(*net.TCPConn).SetLinger(0)
			},
			message: "connection reset by peer",
		},
		{
			name: "idle",
			part: func(unit string, n int) string { return chunk(unit[:n]) },
			fail: func(conn net.Conn) {
				// The node stays silent until the proxy gives up.
				_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
				_, _ = conn.Read(make([]byte, 1))
			},
			message: "no data from node within the idle timeout",
		},
	}
	for _, f := range streamFormats {
		for _, cut := range cuts {
			for _, rp := range relayPaths {
				t.Run(f.name+"/"+cut.name+"/"+rp.name, func(t *testing.T) {
					released, release := releaseOnce(t)
					p := wholeProxy(t, 500*time.Millisecond, func(conn net.Conn) {
						raw := chunkedHeadOf(f.contentType) + chunk(f.units[0]) + chunk(f.units[1]) +
							cut.part(f.units[2], f.partLen)
						_, _ = io.WriteString(conn, raw)
						<-released
						cut.fail(conn)
					})
					reads := openStream(t, p.Addr(), f.path, f.body, rp.http10)
					whole := f.units[0] + f.units[1]
					// The whole units reach the client before the node fails,
					// except before a cut chunk: httputil's chunked reader,
					// through which the line by line relay reads, returns
					// the chunks before it only with the cut.
					body := ""
					if !cut.midChunk {
						if body = readAtLeast(reads, len(whole)); body != whole {
							t.Fatalf("client read %q first, want the node's whole units %q", body, whole)
						}
					}
					release()
					body += readToEnd(reads)
					rest, ok := strings.CutPrefix(body, whole)
					if !ok {
						t.Fatalf("body %q does not start with the node's whole units %q", body, whole)
					}
					msg := f.errorMessage(t, rest)
					if want := "node cutter failed during the response: " + cut.message; msg != want {
						t.Errorf("error message %q, want %q", msg, want)
					}
					checkRelay(t, p, rp.http10)
				})
			}
		}
	}
}

// checkRelay fails the test unless p relayed its one stream on the relay
// that the request's HTTP version selects.
func checkRelay(t *testing.T, p *app.App, http10 bool) {
	t.Helper()
	relay := "event_loop"
	if http10 {
		relay = "goroutine"
	}
	if n := relayCount(p, relay); n != 1 {
		t.Errorf("%s relays %d, want 1", relay, n)
	}
}

// TestStreamSplitUnitArrivesWhole has a node write a line or event in
// two chunks with a pause between them. The client must get none of it
// until the second chunk comes, and then all of it unchanged.
func TestStreamSplitUnitArrivesWhole(t *testing.T) {
	for _, f := range streamFormats {
		for _, rp := range relayPaths {
			t.Run(f.name+"/"+rp.name, func(t *testing.T) {
				released, release := releaseOnce(t)
				split := f.units[2][:f.partLen]
				p := wholeProxy(t, 5*time.Second, func(conn net.Conn) {
					_, _ = io.WriteString(conn, chunkedHeadOf(f.contentType)+chunk(f.units[0])+chunk(split))
					<-released
					_, _ = io.WriteString(conn, chunk(f.units[2][len(split):])+chunk(f.units[1])+"0\r\n\r\n")
				})
				reads := openStream(t, p.Addr(), f.path, f.body, rp.http10)
				if got := readAtLeast(reads, len(f.units[0])); got != f.units[0] {
					t.Fatalf("client read %q first, want the node's first unit %q", got, f.units[0])
				}
				select {
				case got := <-reads:
					t.Fatalf("client read %q before the node sent the rest of %q", got, f.units[2])
				case <-time.After(300 * time.Millisecond):
				}
				release()
				want := f.units[2] + f.units[1]
				if got := readToEnd(reads); got != want {
					t.Errorf("client read %q after the pause, want %q", got, want)
				}
				checkRelay(t, p, rp.http10)
			})
		}
	}
}

// TestStreamEndKeepsLastBytes has a node end its body normally after a
// last line or event without its newlines. The client must get every
// byte and no error.
func TestStreamEndKeepsLastBytes(t *testing.T) {
	// Each framing returns the node's response with the parts as its body.
	framings := []struct {
		name string
		raw  func(contentType string, parts []string) string
	}{
		{"chunked", func(contentType string, parts []string) string {
			raw := chunkedHeadOf(contentType)
			for _, part := range parts {
				raw += chunk(part)
			}
			return raw + "0\r\n\r\n"
		}},
		{"content-length", func(contentType string, parts []string) string {
			body := strings.Join(parts, "")
			return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s",
				contentType, len(body), body)
		}},
		{"until close", func(contentType string, parts []string) string {
			return "HTTP/1.1 200 OK\r\nContent-Type: " + contentType + "\r\nConnection: close\r\n\r\n" +
				strings.Join(parts, "")
		}},
	}
	for _, f := range streamFormats {
		for _, fr := range framings {
			for _, rp := range relayPaths {
				t.Run(f.name+"/"+fr.name+"/"+rp.name, func(t *testing.T) {
					parts := []string{f.units[0], strings.TrimRight(f.units[1], "\n")}
					p := wholeProxy(t, 5*time.Second, func(conn net.Conn) {
						_, _ = io.WriteString(conn, fr.raw(f.contentType, parts))
					})
					reads := openStream(t, p.Addr(), f.path, f.body, rp.http10)
					if got, payload := readToEnd(reads), strings.Join(parts, ""); got != payload {
						t.Errorf("client read %q, want the node's body %q", got, payload)
					}
					checkRelay(t, p, rp.http10)
				})
			}
		}
	}
}

// http10Client returns an HTTP client that sends its requests as
// HTTP/1.0, which the proxy relays line by line instead of on its event
// loop.
func http10Client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &http10Conn{Conn: c}, nil
		},
	}}
}

// http10Conn rewrites the version in the request line, which net/http
// writes in the connection's first write.
type http10Conn struct {
	net.Conn
	rewritten bool
}

func (c *http10Conn) Write(b []byte) (int, error) {
	if !c.rewritten {
		c.rewritten = true
		if line, _, ok := bytes.Cut(b, []byte("\r\n")); ok && bytes.HasSuffix(line, []byte(" HTTP/1.1")) {
			b = bytes.Clone(b)
			copy(b[len(line)-len("1.1"):], "1.0")
		}
	}
	return c.Conn.Write(b)
}

// clientFor returns the HTTP client of a relay path: net/http's default
// HTTP/1.1 client, or http10Client.
func clientFor(http10 bool) *http.Client {
	if http10 {
		return http10Client()
	}
	return http.DefaultClient
}

// cutNodeProxy starts a proxy in front of a node that sends the first two
// units of f, then half of the third inside its chunk, and closes the
// connection.
func cutNodeProxy(t *testing.T, f streamFormat) *app.App {
	t.Helper()
	return wholeProxy(t, 5*time.Second, func(conn net.Conn) {
		third := f.units[2]
		raw := chunkedHeadOf(f.contentType) + chunk(f.units[0]) + chunk(f.units[1]) + chunkCut(third, len(third)/2)
		_, _ = io.WriteString(conn, raw)
	})
}

// TestOllamaClientGetsCutStreamError has Ollama's Go client read a chat
// stream that the node cuts mid-line. The client must end with the
// proxy's error, not with the broken line.
func TestOllamaClientGetsCutStreamError(t *testing.T) {
	for _, rp := range relayPaths {
		t.Run(rp.name, func(t *testing.T) {
			p := cutNodeProxy(t, streamFormats[0])
			u, err := url.Parse(p.URL())
			if err != nil {
				t.Fatal(err)
			}
			c := api.NewClient(u, clientFor(rp.http10))
			var contents []string
			err = c.Chat(context.Background(), &api.ChatRequest{Model: "m",
				Messages: []api.Message{{Role: "user", Content: "hi"}}},
				func(r api.ChatResponse) error {
					contents = append(contents, r.Message.Content)
					return nil
				})
			if err == nil {
				t.Fatal("chat of a cut stream returned no error")
			}
			if !strings.HasPrefix(err.Error(), "node cutter failed during the response: ") {
				t.Errorf("chat error %q, want the proxy's error message", err)
			}
			if strings.Join(contents, ",") != "one,two" {
				t.Errorf("chat got contents %q, want the two whole lines", contents)
			}
			checkRelay(t, p, rp.http10)
		})
	}
}

// TestOpenAIClientGetsCutStreamError has go-openai read a chat stream that
// the node cuts mid-event. The client must end with the proxy's error
// event, not with the broken event.
func TestOpenAIClientGetsCutStreamError(t *testing.T) {
	for _, rp := range relayPaths {
		t.Run(rp.name, func(t *testing.T) {
			p := cutNodeProxy(t, streamFormats[1])
			cfg := openai.DefaultConfig("unused")
			cfg.BaseURL = p.URL() + "/v1"
			cfg.HTTPClient = clientFor(rp.http10)
			stream, err := openai.NewClientWithConfig(cfg).CreateChatCompletionStream(context.Background(),
				openai.ChatCompletionRequest{Model: "m",
					Messages: []openai.ChatCompletionMessage{{Role: "user", Content: "hi"}}})
			if err != nil {
				t.Fatalf("open stream: %v", err)
			}
			defer stream.Close()
			var contents []string
			for {
				resp, err := stream.Recv()
				if err != nil {
					var apiErr *openai.APIError
					if !errors.As(err, &apiErr) {
						t.Fatalf("stream ended with %v, want the proxy's error event as an APIError", err)
					}
					if !strings.HasPrefix(apiErr.Message, "node cutter failed during the response: ") {
						t.Errorf("error message %q, want the proxy's", apiErr.Message)
					}
					break
				}
				contents = append(contents, resp.Choices[0].Delta.Content)
			}
			if strings.Join(contents, ",") != "one,two" {
				t.Errorf("stream got contents %q, want the two whole events", contents)
			}
			checkRelay(t, p, rp.http10)
		})
	}
}

// TestStreamLongLineWhole has a node send a line or event of 300 KB, far
// longer than either relay's read buffer, in chunks of 20 KB. Cut after
// two thirds, the client must get none of it, only the error after the
// whole units before it. Finished after a pause, it must arrive whole.
func TestStreamLongLineWhole(t *testing.T) {
	long := strings.Repeat("A", 300_000)
	formats := []struct {
		streamFormat
		longUnit string
	}{
		{streamFormats[0], chatLine(long, false)},
		{streamFormats[1], openAIChunk(long)},
	}
	// pieces frames unit as chunks of 20 KB.
	pieces := func(unit string) []string {
		var out []string
		for len(unit) > 20_000 {
			out = append(out, chunk(unit[:20_000]))
			unit = unit[20_000:]
		}
		return append(out, chunk(unit))
	}
	for _, f := range formats {
		for _, finished := range []bool{false, true} {
			for _, rp := range relayPaths {
				name := f.name + "/cut/" + rp.name
				if finished {
					name = f.name + "/finished/" + rp.name
				}
				t.Run(name, func(t *testing.T) {
					released, release := releaseOnce(t)
					p := wholeProxy(t, 5*time.Second, func(conn net.Conn) {
						parts := pieces(f.longUnit)
						cut := len(parts) * 2 / 3
						_, _ = io.WriteString(conn, chunkedHeadOf(f.contentType)+chunk(f.units[0]))
						for _, part := range parts[:cut] {
							_, _ = io.WriteString(conn, part)
						}
						<-released
						if finished {
							for _, part := range parts[cut:] {
								_, _ = io.WriteString(conn, part)
							}
							_, _ = io.WriteString(conn, chunk(f.units[1])+"0\r\n\r\n")
						}
					})
					reads := openStream(t, p.Addr(), f.path, f.body, rp.http10)
					if body := readAtLeast(reads, len(f.units[0])); body != f.units[0] {
						t.Fatalf("client read %.200q first, want the whole unit %q", body, f.units[0])
					}
					// The client must not get the start of the long unit
					// while the rest is still missing.
					time.Sleep(200 * time.Millisecond)
					release()
					rest := readToEnd(reads)
					if finished {
						if want := f.longUnit + f.units[1]; rest != want {
							t.Errorf("after the first unit the client read %d bytes (%.100q...), "+
								"want the long unit whole and the last one, %d bytes", len(rest), rest, len(want))
						}
						return
					}
					if len(rest) > 1000 {
						t.Fatalf("after the first unit the client read %d bytes (%.100q...), want only an error",
							len(rest), rest)
					}
					msg := f.errorMessage(t, rest)
					if !strings.HasPrefix(msg, "node cutter failed during the response: ") {
						t.Errorf("error message %q, want the node's failure", msg)
					}
				})
			}
		}
	}
}
