package proxy_test

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
)

// sseEvent is one event that an SSE client dispatches.
type sseEvent struct {
	name string
	data string
}

// parseSSE splits body into events by the HTML Living Standard's rules
// for interpreting an event stream. Lines end in CRLF, LF or CR, and a
// blank line dispatches the event. Data lines are joined with "\n", the
// last event field wins, and an event left open at the end is dropped.
func parseSSE(body string) []sseEvent {
	var events []sseEvent
	var name string
	var data []string
	for len(body) > 0 {
		end := strings.IndexAny(body, "\r\n")
		if end < 0 {
			break // a line that the stream did not end
		}
		line := body[:end]
		if strings.HasPrefix(body[end:], "\r\n") {
			body = body[end+2:]
		} else {
			body = body[end+1:]
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch {
		case line == "":
			if data != nil {
				if name == "" {
					name = "message"
				}
				events = append(events, sseEvent{name, strings.Join(data, "\n")})
			}
			name, data = "", nil
		case field == "event":
			name = value
		case field == "data":
			data = append(data, value)
		}
	}
	return events
}

// cutStreamProxy starts a proxy in front of a node named "cutter" that
// responds with head, sends each of parts as one HTTP chunk, and then
// closes the connection without the last chunk.
func cutStreamProxy(t *testing.T, head string, parts ...string) string {
	t.Helper()
	node := hijackedNode(t, func(conn net.Conn) {
		raw := head
		for _, p := range parts {
			raw += chunk(p)
		}
		_, _ = io.WriteString(conn, raw)
	})
	cfg := testenv.Config(t)
	nc := config.DefaultNode(node)
	nc.Name = "cutter"
	cfg.Nodes = append(cfg.Nodes, nc)
	return testenv.Proxy(t, cfg).Addr()
}

// postStream posts body to path over HTTP/1.1, which the proxy relays on
// its event loop where it has one, or over HTTP/1.0, which it relays line
// by line, and returns the response body.
func postStream(t *testing.T, addr, path, body string, http10 bool) string {
	t.Helper()
	if http10 {
		head, rest := postHTTP10Raw(t, addr, path, body)
		if !strings.HasPrefix(head, "HTTP/1.0 200") && !strings.HasPrefix(head, "HTTP/1.1 200") {
			t.Fatalf("%s: response head %q, want status 200", path, head)
		}
		return rest
	}
	resp := post(t, "http://"+addr+path, body)
	got := string(readBody(t, resp))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: status %d, want 200 for a stream that started; body %q", path, resp.StatusCode, got)
	}
	return got
}

// relayPaths names the two ways the proxy relays a stream.
var relayPaths = []struct {
	name   string
	http10 bool
}{{"http11", false}, {"http10", true}}

// sseCutCases are the places where a node cuts an SSE stream after a
// whole first event. last is the event that the node began, and kept is
// what the client gets of the node's stream: its whole events.
func sseCutCases(first, last string) []struct {
	name  string
	parts []string
	kept  string
} {
	line := strings.TrimSuffix(last, "\n")
	return []struct {
		name  string
		parts []string
		kept  string
	}{
		{"after line", []string{first, line}, first},
		{"mid line", []string{first, line[:len(line)-10]}, first},
		{"at event end", []string{first, last}, first + last},
	}
}

// TestSSECutErrorEventStandsAlone has a node cut a streamed
// /v1/messages and /v1/chat/completions at several places in an event.
// The client must get the node's whole events, none of the cut one, and
// the proxy's error event after them as an event of its own whose data
// parses.
func TestSSECutErrorEventStandsAlone(t *testing.T) {
	anthropicFirst := "event: message_start\ndata: " +
		`{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m",` +
		`"content":[],"usage":{"input_tokens":1,"output_tokens":0}}}` + "\n\n"
	anthropicDelta := "event: content_block_delta\ndata: " +
		`{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hello"}}` + "\n\n"
	openAIChunk := func(content string) string {
		return `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",` +
			`"choices":[{"index":0,"delta":{"role":"assistant","content":"` + content + `"},"finish_reason":null}]}` + "\n\n"
	}
	routes := []struct {
		name, path, body string
		first, last      string
		errorName        string // the name of the error event
		checkError       func(t *testing.T, data string)
	}{
		{
			name: "anthropic", path: "/v1/messages",
			body:  strings.Replace(messagesBody, "{", `{"stream":true,`, 1),
			first: anthropicFirst, last: anthropicDelta, errorName: "error",
			checkError: func(t *testing.T, data string) {
				e := decodeAnthropicError(t, []byte(data))
				if !strings.Contains(e.Error.Message, "node cutter failed during the response") {
					t.Errorf("error message %q does not name the node that failed", e.Error.Message)
				}
			},
		},
		{
			name: "openai", path: "/v1/chat/completions",
			body:  strings.Replace(chatBody, `"stream":false`, `"stream":true`, 1),
			first: openAIChunk("one"), last: openAIChunk("two"), errorName: "message",
			checkError: func(t *testing.T, data string) {
				var e struct {
					Error *struct {
						Message string `json:"message"`
						Type    string `json:"type"`
					} `json:"error"`
				}
				if err := json.Unmarshal([]byte(data), &e); err != nil || e.Error == nil {
					t.Fatalf("error event data %q is not OpenAI's error shape (%v)", data, err)
				}
				if !strings.Contains(e.Error.Message, "node cutter failed during the response") {
					t.Errorf("error message %q does not name the node that failed", e.Error.Message)
				}
			},
		},
	}
	for _, rt := range routes {
		for _, cut := range sseCutCases(rt.first, rt.last) {
			for _, rp := range relayPaths {
				t.Run(rt.name+"/"+cut.name+"/"+rp.name, func(t *testing.T) {
					addr := cutStreamProxy(t, sseHead, cut.parts...)
					body := postStream(t, addr, rt.path, rt.body, rp.http10)
					rest, ok := strings.CutPrefix(body, cut.kept)
					if !ok {
						t.Fatalf("body %q does not start with the node's whole events %q", body, cut.kept)
					}
					if !strings.HasPrefix(rest, "data: ") && !strings.HasPrefix(rest, "event: ") {
						t.Errorf("after the whole events, %q does not start the error event", rest)
					}
					// The node's whole events and the error event.
					events := parseSSE(body)
					if want := len(parseSSE(cut.kept)) + 1; len(events) != want {
						t.Fatalf("body %q parses to %d events %q, want %d", body, len(events), events, want)
					}
					for _, e := range events[:len(events)-1] {
						if !json.Valid([]byte(e.data)) {
							t.Errorf("the node's event has data %q, want the node's JSON alone", e.data)
						}
					}
					last := events[len(events)-1]
					if last.name != rt.errorName {
						t.Errorf("last event named %q, want %q", last.name, rt.errorName)
					}
					rt.checkError(t, last.data)
				})
			}
		}
	}
}

// TestNDJSONCutErrorOnOwnLine has a node cut a streamed /api/chat
// in the middle of a line. The cut line is dropped, and the error line
// follows the node's whole line.
func TestNDJSONCutErrorOnOwnLine(t *testing.T) {
	first, second := chatLine("one", false), chatLine("two", false)
	cutAt := len(second) / 2
	for _, rp := range relayPaths {
		t.Run(rp.name, func(t *testing.T) {
			addr := cutStreamProxy(t, chunkedHead, first, second[:cutAt])
			body := postStream(t, addr, "/api/chat", strings.Replace(chatBody, `"stream":false`, `"stream":true`, 1), rp.http10)
			lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
			if len(lines) != 2 {
				t.Fatalf("body %q has %d lines, want 2: the node's whole line and the error", body, len(lines))
			}
			if lines[0]+"\n" != first {
				t.Errorf("first line %q, want the node's whole line %q", lines[0], first)
			}
			var e struct {
				Error string `json:"error"`
			}
			if err := json.Unmarshal([]byte(lines[1]), &e); err != nil {
				t.Fatalf("last line %q is not JSON: %v", lines[1], err)
			}
			if !strings.Contains(e.Error, "node cutter failed during the response") {
				t.Errorf("error %q does not name the node that failed", e.Error)
			}
		})
	}
}
