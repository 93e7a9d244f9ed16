package ollamasim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// The tests in this file cover /v1/responses and /v1/messages, Ollama's
// OpenAI Responses and Anthropic Messages compatibility routes.

const userHi = `"messages":[{"role":"user","content":"hi"}]`

// anthropicErrorBody is Ollama's anthropic.ErrorResponse.
type anthropicErrorBody struct {
	Type  string `json:"type"`
	Error struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
	RequestID string `json:"request_id"`
}

// postRaw sends body to path and returns the response with its body.
func (n *node) postRaw(t *testing.T, path, body string) (*http.Response, []byte) {
	t.Helper()
	resp := n.do(t, context.Background(), http.MethodPost, path, body)
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read response of %s: %v", path, err)
	}
	return resp, data
}

func TestResponsesWhole(t *testing.T) {
	n := startNode(t, ollamasim.Config{MinTokens: 10, MaxTokens: 10})
	resp, body := n.postRaw(t, "/v1/responses",
		`{"model":"llama3:8b","input":"hi","max_output_tokens":4,"instructions":"be brief"}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, body %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	if !bytes.HasSuffix(body, []byte("}\n")) {
		t.Errorf("body does not end with a newline as json.Encoder writes it: %q", body)
	}

	var r struct {
		Object       string  `json:"object"`
		Status       string  `json:"status"`
		Model        string  `json:"model"`
		Instructions *string `json:"instructions"`
		Output       []struct {
			Type    string `json:"type"`
			Role    string `json:"role"`
			Content []struct {
				Type string `json:"type"`
				Text string `json:"text"`
			} `json:"content"`
		} `json:"output"`
		Usage struct {
			InputTokens  int `json:"input_tokens"`
			OutputTokens int `json:"output_tokens"`
			TotalTokens  int `json:"total_tokens"`
		} `json:"usage"`
		MaxOutputTokens int `json:"max_output_tokens"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}

	if r.Object != "response" || r.Status != "completed" || r.Model != "llama3:8b" {
		t.Errorf("object %q, status %q, model %q", r.Object, r.Status, r.Model)
	}
	if r.Instructions == nil || *r.Instructions != "be brief" {
		t.Errorf("instructions %v, want the request's echoed", r.Instructions)
	}
	if len(r.Output) != 1 || len(r.Output[0].Content) != 1 {
		t.Fatalf("output %+v, want one message with one part", r.Output)
	}
	part := r.Output[0].Content[0]
	if part.Type != "output_text" || len(strings.Fields(part.Text)) != 4 {
		t.Errorf("part %+v, want output_text of 4 words", part)
	}
	if r.Usage.OutputTokens != 4 || r.Usage.InputTokens == 0 ||
		r.Usage.TotalTokens != r.Usage.InputTokens+r.Usage.OutputTokens {
		t.Errorf("usage %+v, want 4 output tokens and a total", r.Usage)
	}
	if r.MaxOutputTokens != 4 {
		t.Errorf("max_output_tokens %d, want 4 echoed", r.MaxOutputTokens)
	}
}

func TestResponsesStream(t *testing.T) {
	n := startNode(t, ollamasim.Config{MinTokens: 5, MaxTokens: 5})
	resp, body := n.postRaw(t, "/v1/responses",
		`{"model":"llama3:8b","input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]}],"stream":true}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, body %s", resp.StatusCode, body)
	}

	events := namedEvents(t, body)
	var deltas, done string
	deltaCount := 0
	var usage struct {
		OutputTokens int `json:"output_tokens"`
	}
	for i, e := range events {
		var data struct {
			Type     string `json:"type"`
			Sequence int    `json:"sequence_number"`
			Delta    string `json:"delta"`
			Text     string `json:"text"`
			Response struct {
				Status string          `json:"status"`
				Usage  json.RawMessage `json:"usage"`
			} `json:"response"`
		}
		if err := json.Unmarshal(e.data, &data); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if data.Type != e.name {
			t.Errorf("event %d: type %q under event name %q", i, data.Type, e.name)
		}
		if data.Sequence != i {
			t.Errorf("event %d: sequence_number %d", i, data.Sequence)
		}
		switch e.name {
		case "response.output_text.delta":
			deltas += data.Delta
			deltaCount++
		case "response.output_text.done":
			done = data.Text
		case "response.completed":
			if data.Response.Status != "completed" {
				t.Errorf("completed response has status %q", data.Response.Status)
			}
			if err := json.Unmarshal(data.Response.Usage, &usage); err != nil {
				t.Errorf("usage %s: %v", data.Response.Usage, err)
			}
		}
	}

	if deltaCount != 5 {
		t.Errorf("%d text deltas, want one per token, 5", deltaCount)
	}
	if deltas == "" || done != deltas {
		t.Errorf("deltas %q and done text %q, want the same text", deltas, done)
	}
	if usage.OutputTokens != 5 {
		t.Errorf("output_tokens %d, want 5", usage.OutputTokens)
	}
	if events[len(events)-1].name != "response.completed" {
		t.Errorf("last event %q, want response.completed", events[len(events)-1].name)
	}
}

// TestResponsesWithoutInputLoads checks that a request without input
// loads the model and returns an empty completed response, as Ollama's
// chat handler does for a chat without messages.
func TestResponsesWithoutInputLoads(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	resp, body := n.postRaw(t, "/v1/responses", `{"model":"llama3:8b"}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, body %s", resp.StatusCode, body)
	}
	if !n.srv.ModelReady("llama3:8b") {
		t.Error("model not loaded after a request without input")
	}
	if !strings.Contains(string(body), `"text":""`) {
		t.Errorf("body %s, want an empty output text", body)
	}
}

func TestMessagesWhole(t *testing.T) {
	cases := []struct {
		name, body string
		stop       string
		tokens     int
	}{
		{"stopped at max_tokens", `{"model":"llama3:8b","max_tokens":3,` + userHi + `}`, "max_tokens", 3},
		{"ended on its own", `{"model":"llama3:8b","max_tokens":100,"system":"be brief",` + userHi + `}`,
			"end_turn", 6},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := startNode(t, ollamasim.Config{MinTokens: 6, MaxTokens: 6})
			resp, body := n.postRaw(t, "/v1/messages", tc.body)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, body %s", resp.StatusCode, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			var m struct {
				ID      string `json:"id"`
				Type    string `json:"type"`
				Role    string `json:"role"`
				Content []struct {
					Type string `json:"type"`
					Text string `json:"text"`
				} `json:"content"`
				StopReason string `json:"stop_reason"`
				Usage      struct {
					InputTokens  int `json:"input_tokens"`
					OutputTokens int `json:"output_tokens"`
				} `json:"usage"`
			}
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatalf("decode %s: %v", body, err)
			}
			if !strings.HasPrefix(m.ID, "msg_") || len(m.ID) != len("msg_")+24 {
				t.Errorf("id %q, want msg_ and 24 hex digits", m.ID)
			}
			if m.Type != "message" || m.Role != "assistant" {
				t.Errorf("type %q, role %q", m.Type, m.Role)
			}
			if len(m.Content) != 1 || m.Content[0].Type != "text" || m.Content[0].Text == "" {
				t.Errorf("content %+v, want one text block", m.Content)
			}
			if m.StopReason != tc.stop {
				t.Errorf("stop_reason %q, want %q", m.StopReason, tc.stop)
			}
			if m.Usage.OutputTokens != tc.tokens || m.Usage.InputTokens == 0 {
				t.Errorf("usage %+v, want %d output tokens", m.Usage, tc.tokens)
			}
		})
	}
}

func TestMessagesStream(t *testing.T) {
	n := startNode(t, ollamasim.Config{MinTokens: 4, MaxTokens: 4})
	resp, body := n.postRaw(t, "/v1/messages",
		`{"model":"llama3:8b","max_tokens":100,"stream":true,`+userHi+`}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, body %s", resp.StatusCode, body)
	}
	if resp.Header.Get("Cache-Control") != "no-cache" {
		t.Errorf("Cache-Control %q, want no-cache as Ollama sets it", resp.Header.Get("Cache-Control"))
	}
	events := namedEvents(t, body)
	var text string
	deltaCount := 0
	var final struct {
		Delta struct {
			StopReason string `json:"stop_reason"`
		} `json:"delta"`
		Usage struct {
			OutputTokens int `json:"output_tokens"`
		} `json:"usage"`
	}
	for i, e := range events {
		var data struct {
			Type  string `json:"type"`
			Delta struct {
				Text string `json:"text"`
			} `json:"delta"`
		}
		if err := json.Unmarshal(e.data, &data); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if data.Type != e.name {
			t.Errorf("event %d: type %q under event name %q", i, data.Type, e.name)
		}
		switch e.name {
		case "content_block_delta":
			text += data.Delta.Text
			deltaCount++
		case "message_delta":
			if err := json.Unmarshal(e.data, &final); err != nil {
				t.Fatal(err)
			}
		}
	}
	if text == "" || deltaCount != 4 {
		t.Errorf("text %q in %d deltas, want one delta per token, 4", text, deltaCount)
	}
	if final.Delta.StopReason != "end_turn" || final.Usage.OutputTokens != 4 {
		t.Errorf("message_delta %+v, want end_turn and 4 output tokens", final)
	}
}

// TestMessagesErrors checks the errors of /v1/messages: Anthropic's
// shape, Ollama's checks and messages, and a request_id.
func TestMessagesErrors(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	cases := []struct {
		name, body string
		status     int
		typ, msg   string
	}{
		{"bad json", `{bad}`, 400, "invalid_request_error",
			"invalid character 'b' looking for beginning of object key string"},
		{"missing model", `{"max_tokens":5,` + userHi + `}`, 400, "invalid_request_error", "model is required"},
		{"missing max_tokens", `{"model":"llama3:8b",` + userHi + `}`, 400, "invalid_request_error",
			"max_tokens is required and must be positive"},
		{"missing messages", `{"model":"llama3:8b","max_tokens":5}`, 400, "invalid_request_error",
			"messages is required"},
		{"unknown model", `{"model":"x","max_tokens":5,` + userHi + `}`, 404, "not_found_error",
			"model 'x' not found"},
		{"embedding model", `{"model":"nomic-embed-text","max_tokens":5,` + userHi + `}`, 400,
			"invalid_request_error", `"nomic-embed-text" does not support chat`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := n.postRaw(t, "/v1/messages", tc.body)
			checkAnthropicError(t, resp, body, tc.status, tc.typ, tc.msg)
		})
	}
}

func checkAnthropicError(t *testing.T, resp *http.Response, body []byte, status int, typ, msg string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status %d, want %d", resp.StatusCode, status)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var e anthropicErrorBody
	if err := dec.Decode(&e); err != nil {
		t.Fatalf("body %s is not Anthropic's error shape: %v", body, err)
	}
	if e.Type != "error" || e.Error.Type != typ || e.Error.Message != msg {
		t.Errorf("error %+v, want type %q and message %q", e, typ, msg)
	}
	if !strings.HasPrefix(e.RequestID, "req_") {
		t.Errorf("request_id %q, want the req_ prefix", e.RequestID)
	}
}

// TestCompatRoutesFaults checks that the inference faults apply to
// /v1/responses and /v1/messages, with errors in each route's shape.
func TestCompatRoutesFaults(t *testing.T) {
	messages := `{"model":"llama3:8b","max_tokens":50,` + userHi + `}`
	responses := `{"model":"llama3:8b","input":"hi"}`

	t.Run("error rate", func(t *testing.T) {
		n := startNode(t, ollamasim.Config{Faults: ollamasim.Faults{ErrorRate: 1, ErrorMessage: "boom"}})
		resp, body := n.postRaw(t, "/v1/messages", messages)
		checkAnthropicError(t, resp, body, 500, "api_error", "boom")
		resp, body = n.postRaw(t, "/v1/responses", responses)
		want := `{"error":{"message":"boom","type":"api_error","param":null,"code":null}}` + "\n"
		if resp.StatusCode != 500 || string(body) != want {
			t.Errorf("responses: status %d, body %s; want 500 %s", resp.StatusCode, body, want)
		}
	})
	t.Run("busy", func(t *testing.T) {
		n := startNode(t, ollamasim.Config{Faults: ollamasim.Faults{Busy: true}})
		resp, body := n.postRaw(t, "/v1/messages", messages)
		checkAnthropicError(t, resp, body, 503, "overloaded_error", "server busy, please try again.  maximum pending requests exceeded")
	})
	t.Run("cut stream", func(t *testing.T) {
		n := startNode(t, ollamasim.Config{MinTokens: 20, MaxTokens: 20,
			Faults: ollamasim.Faults{CutAfterChunks: 3}})
		for _, path := range []string{"/v1/messages", "/v1/responses"} {
			body := strings.Replace(messages, "{", `{"stream":true,"input":"hi",`, 1)
			resp := n.do(t, context.Background(), http.MethodPost, path, body)
			data, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Errorf("%s: stream read to its end, want it cut: %q", path, data)
			}
			if got := bytes.Count(data, []byte("event: ")); got != 3 {
				t.Errorf("%s: %d events before the cut, want 3", path, got)
			}
		}
	})
	t.Run("token pacing", func(t *testing.T) {
		n := startNode(t, ollamasim.Config{MinTokens: 5, MaxTokens: 5, TokensPerSec: 50})
		for _, path := range []string{"/v1/messages", "/v1/responses"} {
			start := time.Now()
			resp, body := n.postRaw(t, path, strings.Replace(messages, "{", `{"input":"hi",`, 1))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: status %d, body %s", path, resp.StatusCode, body)
			}
			if took := time.Since(start); took < 90*time.Millisecond {
				t.Errorf("%s: 5 tokens at 50 per second took %s, want at least 100ms", path, took)
			}
		}
	})
}

// TestCompatRoutesDeterministic checks that temperature 0 fixes the text.
func TestCompatRoutesDeterministic(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	for _, tc := range []struct{ path, body string }{
		{"/v1/messages", `{"model":"llama3:8b","max_tokens":8,"temperature":0,` + userHi + `}`},
		{"/v1/responses", `{"model":"llama3:8b","input":"hi","max_output_tokens":8,"temperature":0}`},
	} {
		_, first := n.postRaw(t, tc.path, tc.body)
		_, second := n.postRaw(t, tc.path, tc.body)
		if generatedText(t, first) != generatedText(t, second) {
			t.Errorf("%s: texts %q and %q differ at temperature 0", tc.path, generatedText(t, first), generatedText(t, second))
		}
	}
}

// generatedText returns the generated text of a /v1/messages or /v1/responses body.
func generatedText(t *testing.T, body []byte) string {
	t.Helper()
	var v struct {
		Content []struct {
			Text string `json:"text"`
		} `json:"content"`
		Output []struct {
			Content []struct {
				Text string `json:"text"`
			} `json:"content"`
		} `json:"output"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("decode %s: %v", body, err)
	}
	if len(v.Content) > 0 {
		return v.Content[0].Text
	}
	if len(v.Output) > 0 && len(v.Output[0].Content) > 0 {
		return v.Output[0].Content[0].Text
	}
	t.Fatalf("body %s has no text", body)
	return ""
}
