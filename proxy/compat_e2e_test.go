package proxy_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// The tests in this file send /v1/responses and /v1/messages requests
// through the proxy to simulated nodes, among them /v1/responses bodies
// compressed with zstd.

const responsesBody = `{"model":"m","input":"hi","max_output_tokens":4}`

// compatProxy starts a proxy with max_body_bytes of limit in front of one
// simulated node with model "m".
func compatProxy(t *testing.T, limit int64) (string, *ollamasim.Running) {
	t.Helper()
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	cfg := testenv.Config(t, sim)
	cfg.MaxBodyBytes = limit
	return testenv.Proxy(t, cfg).URL(), sim
}

// postBody sends body to url with the given Content-Encoding, or none
// when encoding is "".
func postBody(t *testing.T, url string, body []byte, encoding string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if encoding != "" {
		req.Header.Set("Content-Encoding", encoding)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	return resp
}

// zstdFrame compresses data into one zstd frame that records its size.
func zstdFrame(t *testing.T, data []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(data, nil)
}

// zstdStream compresses data as a streaming encoder does, into a frame
// that does not record its decoded size.
func zstdStream(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := enc.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// responsesOutputText returns the text of a whole /v1/responses response.
func responsesOutputText(t *testing.T, body []byte) string {
	t.Helper()
	var r struct {
		Status string `json:"status"`
		Output []struct {
			Content []struct {
				Text string `json:"text"`
			} `json:"content"`
		} `json:"output"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	if r.Status != "completed" || len(r.Output) != 1 || len(r.Output[0].Content) != 1 {
		t.Fatalf("body %s, want a completed response with one message", body)
	}
	return r.Output[0].Content[0].Text
}

// eventNamesOf returns the names of the events of an event stream, in
// order.
func eventNamesOf(body []byte) []string {
	var names []string
	for line := range strings.Lines(string(body)) {
		if name, ok := strings.CutPrefix(line, "event: "); ok {
			names = append(names, strings.TrimSpace(name))
		}
	}
	return names
}

func TestResponsesThroughProxy(t *testing.T) {
	url, _ := compatProxy(t, 1<<20)

	t.Run("whole", func(t *testing.T) {
		resp := post(t, url+"/v1/responses", responsesBody)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, body %s", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q, want application/json", ct)
		}
		if responsesOutputText(t, body) == "" {
			t.Error("empty output text")
		}
	})
	t.Run("streamed", func(t *testing.T) {
		resp := post(t, url+"/v1/responses", strings.Replace(responsesBody, "{", `{"stream":true,`, 1))
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, body %s", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Errorf("Content-Type %q, want text/event-stream", ct)
		}
		names := eventNamesOf(body)
		if len(names) < 3 || names[0] != "response.created" || names[len(names)-1] != "response.completed" {
			t.Errorf("events %v, want response.created first and response.completed last", names)
		}
		if bytes.Contains(body, []byte("[DONE]")) {
			t.Errorf("stream has a [DONE] event, which Ollama does not send on /v1/responses")
		}
	})
}

func TestMessagesThroughProxy(t *testing.T) {
	url, _ := compatProxy(t, 1<<20)

	t.Run("whole", func(t *testing.T) {
		resp := post(t, url+"/v1/messages", messagesBody)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, body %s", resp.StatusCode, body)
		}
		var m struct {
			Type    string `json:"type"`
			Content []struct {
				Text string `json:"text"`
			} `json:"content"`
			StopReason string `json:"stop_reason"`
		}
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatalf("decode %s: %v", body, err)
		}
		if m.Type != "message" || len(m.Content) != 1 || m.Content[0].Text == "" || m.StopReason == "" {
			t.Errorf("body %s, want a message with text and a stop_reason", body)
		}
	})
	t.Run("streamed", func(t *testing.T) {
		resp := post(t, url+"/v1/messages", strings.Replace(messagesBody, "{", `{"stream":true,`, 1))
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, body %s", resp.StatusCode, body)
		}
		names := eventNamesOf(body)
		if len(names) < 4 || names[0] != "message_start" || names[len(names)-1] != "message_stop" {
			t.Errorf("events %v, want message_start first and message_stop last", names)
		}
	})
	t.Run("unknown model", func(t *testing.T) {
		resp := post(t, url+"/v1/messages", strings.Replace(messagesBody, `"m"`, `"nope"`, 1))
		if msg := anthropicErrorOf(t, resp, 404, "not_found_error"); msg != "model 'nope' not found" {
			t.Errorf("message %q, want Ollama's", msg)
		}
	})
}

// TestResponsesZstdBody sends a /v1/responses body compressed with zstd.
// The node gets it decoded, without Content-Encoding and with the decoded
// length, and the client a normal response.
func TestResponsesZstdBody(t *testing.T) {
	url, sim := compatProxy(t, 1<<20)
	streamed := strings.Replace(responsesBody, "{", `{"stream":true,`, 1)
	cases := []struct {
		name, body string
		compress   func(*testing.T, []byte) []byte
	}{
		{"whole, one sized frame", responsesBody, zstdFrame},
		{"whole, streaming encoder", responsesBody, zstdStream},
		{"streamed response", streamed, zstdFrame},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := postBody(t, url+"/v1/responses", tc.compress(t, []byte(tc.body)), "zstd")
			body := readBody(t, resp)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, body %s", resp.StatusCode, body)
			}
			if strings.Contains(tc.body, `"stream":true`) {
				if names := eventNamesOf(body); len(names) == 0 || names[len(names)-1] != "response.completed" {
					t.Errorf("events %v, want a stream that ends with response.completed", names)
				}
			} else if responsesOutputText(t, body) == "" {
				t.Error("empty output text")
			}

			got, ok := sim.Server().LastRequest("/v1/responses")
			if !ok {
				t.Fatal("the node received no /v1/responses request")
			}
			if string(got.Body) != tc.body {
				t.Errorf("node got body %q, want the decoded %q", got.Body, tc.body)
			}
			if ce := got.Header.Get("Content-Encoding"); ce != "" {
				t.Errorf("node got Content-Encoding %q, want none", ce)
			}
			if cl := got.Header.Get("Content-Length"); cl != strconv.Itoa(len(tc.body)) {
				t.Errorf("node got Content-Length %q, want %d", cl, len(tc.body))
			}
		})
	}
}

// TestResponsesZstdBodyErrors checks the errors of zstd bodies on
// /v1/responses: 413 for one that decodes to more than max_body_bytes,
// however it is framed, and 400 for one that is not zstd. Each has
// OpenAI's shape, and the node gets nothing.
func TestResponsesZstdBodyErrors(t *testing.T) {
	const limit = 64 << 10
	url, sim := compatProxy(t, limit)
	// A valid request padded past the limit with spaces, which compress
	// to almost nothing.
	big := []byte(`{"model":"m","input":"hi"` + strings.Repeat(" ", 8<<20) + `}`)
	half := []byte(`{"model":"m","input":"` + strings.Repeat("x", limit-100) + `"}`)
	cases := []struct {
		name     string
		body     []byte
		status   int
		contains string
	}{
		{"bomb in one sized frame", zstdFrame(t, big), 413, "max_body_bytes"},
		{"bomb from a streaming encoder", zstdStream(t, big), 413, "max_body_bytes"},
		{"two frames over the limit together", append(zstdFrame(t, half), zstdFrame(t, half)...), 413,
			"max_body_bytes"},
		{"not zstd", []byte(responsesBody), 400, "invalid zstd request body"},
		{"cut zstd", zstdFrame(t, []byte(responsesBody))[:10], 400, "invalid zstd request body"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.body) > limit {
				t.Fatalf("compressed body of %d bytes is over the limit itself", len(tc.body))
			}
			before := sim.Server().Stats().Requests["/v1/responses"]
			resp := postBody(t, url+"/v1/responses", tc.body, "zstd")
			if msg := openAIErrorMessage(t, resp, tc.status); !strings.Contains(msg, tc.contains) {
				t.Errorf("message %q does not contain %q", msg, tc.contains)
			}
			if after := sim.Server().Stats().Requests["/v1/responses"]; after != before {
				t.Errorf("the node got %d requests, want none", after-before)
			}
		})
	}
}

// TestResponsesZstdBodyOllamaLimit checks that a zstd body is held to
// Ollama's 20 MiB of decoded body even where max_body_bytes allows more:
// one byte over gets 413 and the node gets nothing, while a body of
// exactly 20 MiB reaches the node.
func TestResponsesZstdBodyOllamaLimit(t *testing.T) {
	url, sim := compatProxy(t, 64<<20)
	padded := func(size int) []byte {
		head, tail := `{"model":"m","input":"hi"`, `}`
		return []byte(head + strings.Repeat(" ", size-len(head)-len(tail)) + tail)
	}

	resp := postBody(t, url+"/v1/responses", zstdFrame(t, padded(20<<20+1)), "zstd")
	if msg := openAIErrorMessage(t, resp, 413); !strings.Contains(msg, "20971520 bytes") {
		t.Errorf("message %q, want the limit of 20971520 bytes", msg)
	}
	if n := sim.Server().Stats().Requests["/v1/responses"]; n != 0 {
		t.Errorf("the node got %d requests for a body over the limit, want none", n)
	}

	resp = postBody(t, url+"/v1/responses", zstdStream(t, padded(20<<20)), "zstd")
	if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
		t.Fatalf("body of exactly 20 MiB: status %d, body %s", resp.StatusCode, body)
	}
	got, ok := sim.Server().LastRequest("/v1/responses")
	// The simulator records only the first 16 MiB of a body, so the
	// length comes from the header, which the node's server checked.
	if cl := got.Header.Get("Content-Length"); !ok || cl != strconv.Itoa(20<<20) {
		t.Errorf("the node got Content-Length %q (ok %v), want the 20 MiB body", cl, ok)
	}
}

// TestZstdBodyOnOtherRoutes checks that only /v1/responses decodes zstd,
// as in Ollama: on another route a zstd body is invalid JSON, and a body
// with another encoding is not decoded either.
func TestZstdBodyOnOtherRoutes(t *testing.T) {
	url, _ := compatProxy(t, 1<<20)
	chat := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)

	resp := postBody(t, url+"/v1/chat/completions", zstdFrame(t, chat), "zstd")
	// A zstd frame starts with the byte '('.
	const notJSON = "invalid character '(' looking for beginning of value"
	if msg := openAIErrorMessage(t, resp, 400); msg != notJSON {
		t.Errorf("zstd on /v1/chat/completions: message %q, want %q", msg, notJSON)
	}
	resp = postBody(t, url+"/v1/responses", zstdFrame(t, []byte(responsesBody)), "gzip")
	if msg := openAIErrorMessage(t, resp, 400); msg != notJSON {
		t.Errorf("gzip label on /v1/responses: message %q, want %q", msg, notJSON)
	}
}
