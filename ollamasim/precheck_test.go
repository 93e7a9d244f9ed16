package ollamasim_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// checkCase is a request that Ollama v0.17.4 rejects before it looks the
// model up, and its expected response.
type checkCase struct {
	name        string
	method      string
	path        string
	body        string
	status      int
	wantBody    string // the whole expected body, or "" to check only wantMessage
	wantMessage string // a part of the expected body
	contentType string
}

// Error content types of Ollama: gin's JSON on /api and on errors of the
// /v1 middleware, json.Encoder's through the middleware's writer.
const (
	ginJSON     = "application/json; charset=utf-8"
	encoderJSON = "application/json"
)

func runCheckCases(t *testing.T, n *node, cases []checkCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method := cmpOr(tc.method, http.MethodPost)
			resp := n.do(t, context.Background(), method, tc.path, tc.body)
			data, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("read body: %v", err)
			}
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d (body %s)", resp.StatusCode, tc.status, data)
			}
			if got := resp.Header.Get("Content-Type"); got != tc.contentType {
				t.Errorf("Content-Type %q, want %q", got, tc.contentType)
			}
			if tc.wantBody != "" && string(data) != tc.wantBody {
				t.Errorf("body %q, want %q", data, tc.wantBody)
			}
			if !strings.Contains(string(data), tc.wantMessage) {
				t.Errorf("body %s, want it to contain %q", data, tc.wantMessage)
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func TestInvalidModelNamesRejected(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	runCheckCases(t, n, []checkCase{
		{name: "pull", path: "/api/pull", body: `{"model":"bad name!!"}`,
			status: 400, wantBody: `{"error":"invalid model name"}`, contentType: ginJSON},
		{name: "pull legacy name", path: "/api/pull", body: `{"name":"bad name!!"}`,
			status: 400, wantBody: `{"error":"invalid model name"}`, contentType: ginJSON},
		{name: "create", path: "/api/create", body: `{"model":"bad name!!","from":"llama3:8b"}`,
			status: 400, wantBody: `{"error":"invalid model name"}`, contentType: ginJSON},
		{name: "create file path", path: "/api/create",
			body:   `{"model":"bad name!!","files":{"/etc/passwd":"sha256:00"}}`,
			status: 400, wantBody: `{"error":"file path must be relative"}`, contentType: ginJSON},
		{name: "delete", method: http.MethodDelete, path: "/api/delete", body: `{"model":"bad name!!"}`,
			status: 400, wantBody: `{"error":"name \"bad name!!\" is invalid"}`, contentType: ginJSON},
		{name: "show", path: "/api/show", body: `{"model":"bad name!!"}`, status: 500,
			wantBody:    `{"error":"unqualified name: registry.ollama.ai/library/bad name!!:latest"}`,
			contentType: ginJSON},
		{name: "copy source", path: "/api/copy", body: `{"source":"bad name!!","destination":"x"}`,
			status: 400, wantBody: `{"error":"source \"bad name!!\" is invalid"}`, contentType: ginJSON},
		{name: "copy destination", path: "/api/copy", body: `{"source":"llama3:8b","destination":"a b"}`,
			status: 400, wantBody: `{"error":"destination \"a b\" is invalid"}`, contentType: ginJSON},
		{name: "push", path: "/api/push", body: `{}`,
			status: 400, wantBody: `{"error":"model is required"}`, contentType: ginJSON},
		{name: "chat", path: "/api/chat", body: `{"model":"bad name!!"}`,
			status: 400, wantBody: `{"error":"model is required"}`, contentType: ginJSON},
		{name: "embeddings", path: "/api/embeddings", body: `{"model":"bad name!!"}`,
			status: 400, wantBody: `{"error":"model is required"}`, contentType: ginJSON},
		{name: "embed", path: "/api/embed", body: `{"model":"bad name!!","input":"x"}`, status: 500,
			wantBody:    `{"error":"unqualified name: registry.ollama.ai/library/bad name!!:latest"}`,
			contentType: ginJSON},
		{name: "generate", path: "/api/generate", body: `{"model":"bad name!!"}`,
			status: 404, wantBody: `{"error":"model 'bad name!!' not found"}`, contentType: ginJSON},
		{name: "openai chat", path: "/v1/chat/completions",
			body:   `{"model":"bad name!!","messages":[{"role":"user","content":"hi"}]}`,
			status: 400, wantMessage: `"message":"model is required"`, contentType: encoderJSON},
		{name: "openai model", method: http.MethodGet, path: "/v1/models/bad%20name!!",
			status:      500,
			wantMessage: `"message":"unqualified name: registry.ollama.ai/library/bad name!!:latest"`,
			contentType: encoderJSON},
	})
}

func TestWrongFieldTypesRejected(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	runCheckCases(t, n, []checkCase{
		{name: "show verbose", path: "/api/show", body: `{"model":"llama3:8b","verbose":"yes"}`,
			status: 400, contentType: ginJSON,
			wantBody: `{"error":"json: cannot unmarshal string into Go struct field ` +
				`ShowRequest.verbose of type bool"}`},
		{name: "generate prompt", path: "/api/generate", body: `{"model":"llama3:8b","prompt":1}`,
			status: 400, contentType: ginJSON,
			wantBody: `{"error":"json: cannot unmarshal number into Go struct field ` +
				`GenerateRequest.prompt of type string"}`},
		{name: "chat messages", path: "/api/chat", body: `{"model":"llama3:8b","messages":"hi"}`,
			status: 400, contentType: ginJSON,
			wantBody: `{"error":"json: cannot unmarshal string into Go struct field ` +
				`ChatRequest.messages of type []api.Message"}`},
		{name: "chat body array", path: "/api/chat", body: `[]`,
			status: 400, contentType: ginJSON,
			wantBody: `{"error":"json: cannot unmarshal array into Go value of type api.ChatRequest"}`},
		{name: "pull stream", path: "/api/pull", body: `{"model":"llama3:8b","stream":"no"}`,
			status: 400, contentType: ginJSON,
			wantBody: `{"error":"json: cannot unmarshal string into Go struct field ` +
				`PullRequest.stream of type bool"}`},
		{name: "empty body", path: "/api/show", body: "",
			status: 400, contentType: ginJSON, wantBody: `{"error":"missing request body"}`},
		{name: "openai chat", path: "/v1/chat/completions",
			body:   `{"model":"llama3:8b","messages":"hi"}`,
			status: 400, contentType: ginJSON,
			wantBody: `{"error":{"message":"json: cannot unmarshal string into Go struct field ` +
				`ChatCompletionRequest.messages of type []openai.Message",` +
				`"type":"invalid_request_error","param":null,"code":null}}`},
		{name: "openai embeddings", path: "/v1/embeddings",
			body:   `{"model":"nomic-embed-text","input":"x","dimensions":"8"}`,
			status: 400, contentType: ginJSON,
			wantMessage: "json: cannot unmarshal string into Go struct field " +
				"EmbedRequest.dimensions of type int"},
		{name: "anthropic messages", path: "/v1/messages",
			body:   `{"model":"llama3:8b","max_tokens":"8","messages":[]}`,
			status: 400, contentType: ginJSON,
			wantMessage: `"type":"error","error":{"type":"invalid_request_error",` +
				`"message":"json: cannot unmarshal string into Go struct field ` +
				`MessagesRequest.max_tokens of type int"}`},
	})
}

func TestErrorContentTypeMatchesRecording(t *testing.T) {
	f, err := os.Open("testdata/err_bad_json.headers")
	if err != nil {
		t.Fatalf("open recording: %v", err)
	}
	defer f.Close()
	recorded, err := http.ReadResponse(bufio.NewReader(f), nil)
	if err != nil {
		t.Fatalf("read recording: %v", err)
	}
	n := startNode(t, ollamasim.Config{})
	resp := n.do(t, context.Background(), http.MethodPost, "/api/show", `{"verbose":"yes"}`)
	if resp.StatusCode != recorded.StatusCode {
		t.Errorf("status %d, want %d", resp.StatusCode, recorded.StatusCode)
	}
	if got, want := resp.Header.Get("Content-Type"), recorded.Header.Get("Content-Type"); got != want {
		t.Errorf("Content-Type %q, want %q", got, want)
	}
}

func TestValueChecksBeforeLookup(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	runCheckCases(t, n, []checkCase{
		{name: "generate top_logprobs", path: "/api/generate",
			body:   `{"model":"llama3:8b","prompt":"hi","logprobs":true,"top_logprobs":50}`,
			status: 400, contentType: ginJSON,
			wantBody: `{"error":"top_logprobs must be between 0 and 20"}`},
		{name: "top_logprobs before lookup", path: "/api/chat",
			body:   `{"model":"missing:1b","top_logprobs":-1}`,
			status: 400, contentType: ginJSON,
			wantBody: `{"error":"top_logprobs must be between 0 and 20"}`},
		{name: "embed input type", path: "/api/embed",
			body:   `{"model":"nomic-embed-text","input":[1]}`,
			status: 400, contentType: ginJSON, wantBody: `{"error":"invalid input type"}`},
		{name: "openai chat top_logprobs", path: "/v1/chat/completions",
			body: `{"model":"llama3:8b","messages":[{"role":"user","content":"hi"}],` +
				`"logprobs":true,"top_logprobs":50}`,
			status: 400, contentType: encoderJSON,
			wantBody: `{"error":{"message":"top_logprobs must be between 0 and 20",` +
				`"type":"invalid_request_error","param":null,"code":null}}` + "\n"},
		{name: "openai chat no messages", path: "/v1/chat/completions",
			body: `{"model":"llama3:8b","messages":[]}`, status: 400, contentType: ginJSON,
			wantMessage: `"message":"[] is too short - 'messages'"`},
		{name: "openai embeddings format", path: "/v1/embeddings",
			body:   `{"model":"nomic-embed-text","input":"x","encoding_format":"int8"}`,
			status: 400, contentType: ginJSON,
			wantMessage: "Invalid value for 'encoding_format' = int8. " +
				"Supported values: ['float', 'base64']."},
		{name: "anthropic max_tokens", path: "/v1/messages",
			body:   `{"model":"llama3:8b","messages":[{"role":"user","content":"hi"}]}`,
			status: 400, contentType: ginJSON,
			wantMessage: `"message":"max_tokens is required and must be positive"`},
	})
}

func TestRouterMatchesGin(t *testing.T) {
	n := startNode(t, ollamasim.Config{Models: []ollamasim.ModelSpec{{Name: "user/custom:v1"}}})
	t.Run("namespaced model path", func(t *testing.T) {
		resp := n.do(t, context.Background(), http.MethodGet, "/v1/models/user/custom:v1", "")
		data, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("status %d, want 404", resp.StatusCode)
		}
		if string(data) != "404 page not found" {
			t.Errorf("body %q, want gin's 404 text", data)
		}
	})
	t.Run("escaped slash", func(t *testing.T) {
		status, data := n.get(t, "/api%2Ftags")
		if status != http.StatusOK {
			t.Errorf("status %d, want 200", status)
		}
		if !strings.Contains(string(data), `"user/custom:v1"`) {
			t.Errorf("body %s, want the model list", data)
		}
	})
}

func TestOptionsAnsweredAsOllama(t *testing.T) {
	n := startNode(t, ollamasim.Config{})
	send := func(t *testing.T, host, origin string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodOptions, n.URL()+"/api/generate", nil)
		if err != nil {
			t.Fatalf("new request: %v", err)
		}
		if host != "" {
			req.Host = host
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
			req.Header.Set("Access-Control-Request-Method", "POST")
		}
		resp, err := n.http.Do(req)
		if err != nil {
			t.Fatalf("OPTIONS: %v", err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	t.Run("preflight", func(t *testing.T) {
		resp := send(t, "", "http://localhost:3000")
		if resp.StatusCode != http.StatusNoContent {
			t.Errorf("status %d, want 204", resp.StatusCode)
		}
		want := map[string]string{
			"Access-Control-Allow-Origin":  "http://localhost:3000",
			"Access-Control-Allow-Methods": "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS",
			"Access-Control-Max-Age":       "43200",
		}
		for key, value := range want {
			if got := resp.Header.Get(key); got != value {
				t.Errorf("%s %q, want %q", key, got, value)
			}
		}
		if got := resp.Header.Get("Access-Control-Allow-Headers"); !strings.Contains(got, "X-Stainless-Timeout") {
			t.Errorf("Access-Control-Allow-Headers %q, want Ollama's list", got)
		}
		if got := resp.Header.Values("Vary"); len(got) != 3 || got[0] != "Origin" {
			t.Errorf("Vary %q, want Origin and the two request headers", got)
		}
	})
	t.Run("foreign origin", func(t *testing.T) {
		resp := send(t, "", "https://evil.example")
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("status %d, want 403", resp.StatusCode)
		}
	})
	t.Run("host name", func(t *testing.T) {
		resp := send(t, "localhost", "")
		if resp.StatusCode != http.StatusNoContent {
			t.Errorf("status %d, want 204", resp.StatusCode)
		}
	})
	t.Run("IP host", func(t *testing.T) {
		resp := send(t, "", "")
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("status %d, want 405", resp.StatusCode)
		}
	})
	t.Run("cross origin GET", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, n.URL()+"/api/version", nil)
		if err != nil {
			t.Fatalf("new request: %v", err)
		}
		req.Header.Set("Origin", "http://127.0.0.1:8080")
		resp, err := n.http.Do(req)
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		defer resp.Body.Close()
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "http://127.0.0.1:8080" {
			t.Errorf("Access-Control-Allow-Origin %q, want the origin", got)
		}
		if got := resp.Header.Get("Vary"); got != "Origin" {
			t.Errorf("Vary %q, want Origin", got)
		}
	})
}

// TestSkipChecksServesUnchecked checks that a node with SkipChecks serves
// a request that the checks reject: the handler itself does not look at
// top_logprobs.
func TestSkipChecksServesUnchecked(t *testing.T) {
	n := startNode(t, ollamasim.Config{SkipChecks: true})
	runCheckCases(t, n, []checkCase{
		{name: "generate top_logprobs", path: "/api/generate",
			body:   `{"model":"llama3:8b","prompt":"hi","stream":false,"logprobs":true,"top_logprobs":50}`,
			status: 200, contentType: ginJSON},
	})
}
