package proxy_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// headSecret is sent in every oversized head. The 431 body must not
// contain it.
const headSecret = "sk-head-secret-0123456789"

// sendOversizedHead sends requestLine with 20 KiB of headers, over the
// default max_header_bytes of 8 KiB, to the proxy at baseURL and returns
// the response with its body.
func sendOversizedHead(t *testing.T, baseURL, requestLine string) (*http.Response, []byte) {
	t.Helper()
	head := requestLine + "\r\n" +
		"Host: " + strings.TrimPrefix(baseURL, "http://") + "\r\n" +
		"Authorization: Bearer " + headSecret + "\r\n" +
		"Content-Type: application/json\r\n" +
		"Cookie: s=" + strings.Repeat("a", 20<<10) + "\r\n" +
		"Content-Length: 2\r\n\r\n"
	return exchange(t, baseURL, head, []byte("{}"))
}

func TestHeaderLimitErrorShape(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	proxy := testenv.Proxy(t, testenv.Config(t, a))
	long := strings.Repeat("q", 300)
	// A path longer than the part of the head that fasthttp quotes.
	longPath := strings.Repeat("a", 9000)

	cases := []struct {
		name        string
		requestLine string
		openAI      bool
	}{
		{"openai chat", "POST /v1/chat/completions HTTP/1.1", true},
		{"openai embeddings", "POST /v1/embeddings HTTP/1.1", true},
		{"openai models with query", "GET /v1/models?limit=1 HTTP/1.1", true},
		{"unknown v1 path", "POST /v1/unknown HTTP/1.1", true},
		// The query string runs past the part of the head that fasthttp
		// quotes in its error, but the path ends before it.
		{"openai chat with long query", "POST /v1/chat/completions?pad=" + long + " HTTP/1.1", true},
		{"openai chat absolute form", "POST " + proxy.URL() + "/v1/chat/completions HTTP/1.1", true},
		{"cut v1 path", "POST /v1/" + longPath + " HTTP/1.1", true},
		{"cut v1 path absolute form", "POST " + proxy.URL() + "/v1/" + longPath + " HTTP/1.1", true},
		{"cut ollama path", "POST /api/" + longPath + " HTTP/1.1", false},
		{"cut root path", "GET /" + longPath + " HTTP/1.1", false},
		{"ollama chat", "POST /api/chat HTTP/1.1", false},
		{"ollama generate", "POST /api/generate HTTP/1.1", false},
		{"ollama tags", "GET /api/tags HTTP/1.1", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := sendOversizedHead(t, proxy.URL(), c.requestLine)
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Errorf("status %d, want 431 (body %s)", resp.StatusCode, body)
			}
			if strings.Contains(string(body), headSecret) {
				t.Errorf("431 body %s contains the Authorization value", body)
			}
			if c.openAI {
				checkOpenAIShape(t, body)
			} else {
				checkOllamaShape(t, body)
			}
		})
	}
}

// checkOpenAIShape checks that body is {"error":{"message":...,"type":...}}
// with a message naming the 8192-byte limit and the type of a client error.
func checkOpenAIShape(t *testing.T, body []byte) {
	t.Helper()
	var e struct {
		Error *struct {
			Message string `json:"message"`
			Type    string `json:"type"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == nil {
		t.Fatalf("body %s is not in OpenAI's error shape: %v", body, err)
	}
	if !strings.Contains(e.Error.Message, "8192 bytes") {
		t.Errorf("error message %q, want it to name 8192 bytes", e.Error.Message)
	}
	if e.Error.Type != "invalid_request_error" {
		t.Errorf("error type %q, want invalid_request_error for a client error", e.Error.Type)
	}
}

// checkOllamaShape checks that body is {"error":"..."} with a message
// naming the 8192-byte limit.
func checkOllamaShape(t *testing.T, body []byte) {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("body %s is not in Ollama's error shape: %v", body, err)
	}
	if !strings.Contains(e.Error, "8192 bytes") {
		t.Errorf("error message %q, want it to name 8192 bytes", e.Error)
	}
}

// TestHeaderLimitReachesClient sends heads far over max_header_bytes with
// Go's HTTP client, which writes the whole request before it reads. The
// proxy reads the rest before it closes, so the client gets the 431
// instead of a reset connection.
func TestHeaderLimitReachesClient(t *testing.T) {
	a := testenv.Sim(t, "m", ollamasim.Config{})
	proxy := testenv.Proxy(t, testenv.Config(t, a))
	for i := range 5 {
		req, err := http.NewRequest("POST", proxy.URL()+"/v1/chat/completions", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Big", strings.Repeat("b", 500<<10))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("request %d: status %d, want 431", i, resp.StatusCode)
		}
		if !strings.Contains(string(body), `"message":`) {
			t.Errorf("request %d: body %s, want OpenAI's error shape", i, body)
		}
	}
}
