package proxy_test

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// The tests in this file hold the proxy to what Ollama v0.17.4 sends in
// the cases where the proxy answers without a node, or passes on a node's
// answer that has no body. Each expectation comes from Ollama's source:
// server/routes.go, the middleware of its /v1 routes, gin v1.10.0 and
// gin-contrib/cors v1.7.2 as Ollama configures them, and Go 1.24's
// http.ServeMux, through which Ollama serves its router.

// wireReply is one response as a client reads it.
type wireReply struct {
	status int
	header http.Header
	body   string
}

// sendWire sends method and path (with any query) to the proxy at base with the
// given headers, as "Name: value" strings, and returns the response
// without following a redirect. A Host header replaces the request's
// host.
func sendWire(t *testing.T, base, method, path, body string, header ...string) wireReply {
	t.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range header {
		name, value, _ := strings.Cut(h, ": ")
		if name == "Host" {
			req.Host = value
			continue
		}
		req.Header.Set(name, value)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return wireReply{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// check compares an wireReply with the status, Content-Type ("" for none)
// and body that Ollama sends.
func (e wireReply) check(t *testing.T, status int, contentType, body string) {
	t.Helper()
	if e.status != status {
		t.Errorf("status %d, want %d (body %q)", e.status, status, e.body)
	}
	if got := e.header.Get("Content-Type"); got != contentType {
		t.Errorf("Content-Type %q, want %q", got, contentType)
	}
	if e.body != body {
		t.Errorf("body %q, want %q", e.body, body)
	}
}

const ollamaJSON = "application/json; charset=utf-8"

// TestNonObjectBodiesAsOllama sends JSON values other than an object to
// every route that reads a body. Go's decoder, which Ollama uses, rejects
// each with a message that names the route's request type, except null,
// which leaves the request empty, as {} does.
func TestNonObjectBodiesAsOllama(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	types := map[string]string{
		"POST /api/generate":   "api.GenerateRequest",
		"POST /api/chat":       "api.ChatRequest",
		"POST /api/embed":      "api.EmbedRequest",
		"POST /api/embeddings": "api.EmbeddingRequest",
		"POST /api/show":       "api.ShowRequest",
		"DELETE /api/delete":   "api.DeleteRequest",
		"POST /api/pull":       "api.PullRequest",
		"POST /api/push":       "api.PushRequest",
		"POST /api/copy":       "api.CopyRequest",
		"POST /api/create":     "api.CreateRequest",
	}
	for route, typ := range types {
		for _, tc := range []struct{ body, kind string }{
			{`[1]`, "array"}, {`"x"`, "string"}, {`5`, "number"}, {`true`, "bool"},
		} {
			t.Run(route+" "+tc.body, func(t *testing.T) {
				method, path, _ := strings.Cut(route, " ")
				sendWire(t, f.proxy.URL(), method, path, tc.body).check(t, 400, ollamaJSON,
					`{"error":"json: cannot unmarshal `+tc.kind+` into Go value of type `+typ+`"}`)
			})
		}
	}

	nulls := []struct {
		route  string
		status int
		body   string
	}{
		{"POST /api/generate", 404, `{"error":"model '' not found"}`},
		{"POST /api/chat", 400, `{"error":"model is required"}`},
		{"POST /api/embeddings", 400, `{"error":"model is required"}`},
		{"POST /api/show", 400, `{"error":"model is required"}`},
		{"DELETE /api/delete", 400, `{"error":"name \"\" is invalid"}`},
		{"POST /api/pull", 400, `{"error":"invalid model name"}`},
		{"POST /api/copy", 400, `{"error":"source \"\" is invalid"}`},
	}
	for _, tc := range nulls {
		t.Run(tc.route+" null", func(t *testing.T) {
			method, path, _ := strings.Cut(tc.route, " ")
			sendWire(t, f.proxy.URL(), method, path, `null`).check(t, tc.status, ollamaJSON, tc.body)
		})
	}

	// On /v1, the middleware decodes the body and gin writes its error:
	// a charset, and no newline after the object.
	openAI := func(msg string) string {
		return `{"error":{"message":"` + msg + `","type":"invalid_request_error","param":null,"code":null}}`
	}
	v1 := []struct {
		path, body, msg string
	}{
		{"/v1/chat/completions", `[]`,
			"json: cannot unmarshal array into Go value of type openai.ChatCompletionRequest"},
		{"/v1/chat/completions", `null`, "[] is too short - 'messages'"},
		{"/v1/completions", `"x"`, "json: cannot unmarshal string into Go value of type openai.CompletionRequest"},
		{"/v1/embeddings", `5`, "json: cannot unmarshal number into Go value of type openai.EmbedRequest"},
		{"/v1/embeddings", `null`, "invalid input"},
		{"/v1/responses", `[]`, "json: cannot unmarshal array into Go value of type openai.ResponsesRequest"},
		{"/v1/chat/completions", `{bad}`,
			"invalid character 'b' looking for beginning of object key string"},
	}
	for _, tc := range v1 {
		t.Run(tc.path+" "+tc.body, func(t *testing.T) {
			sendWire(t, f.proxy.URL(), "POST", tc.path, tc.body).check(t, 400, ollamaJSON, openAI(tc.msg))
		})
	}
}

// TestChecksBeforeModelLookupAsOllama sends requests for a model that no
// node has, with a field that Ollama rejects before it looks the model up.
// Each gets Ollama's error for the field, not the 404.
func TestChecksBeforeModelLookupAsOllama(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	const user = `"messages":[{"role":"user","content":"x"}]`
	cases := []struct {
		name, route, body string
		status            int
		contentType, want string
	}{
		{"generate top_logprobs", "POST /api/generate", `{"model":"nope","top_logprobs":21}`, 400,
			ollamaJSON, `{"error":"top_logprobs must be between 0 and 20"}`},
		{"chat top_logprobs", "POST /api/chat", `{"model":"nope","top_logprobs":-1,` + user + `}`, 400,
			ollamaJSON, `{"error":"top_logprobs must be between 0 and 20"}`},
		{"generate prompt type", "POST /api/generate", `{"model":"nope","prompt":5}`, 400, ollamaJSON,
			`{"error":"json: cannot unmarshal number into Go struct field GenerateRequest.prompt of type string"}`},
		{"generate keep_alive", "POST /api/generate", `{"model":"nope","keep_alive":"soon"}`, 400,
			ollamaJSON, `{"error":"time: invalid duration \"soon\""}`},
		{"chat think", "POST /api/chat", `{"model":"nope","think":5,` + user + `}`, 400, ollamaJSON,
			`{"error":"think must be a boolean or string (\"high\", \"medium\", \"low\", true, or false)"}`},
		{"chat options type", "POST /api/chat", `{"model":"nope","options":[],` + user + `}`, 400,
			ollamaJSON, `{"error":"json: cannot unmarshal array into Go struct field ChatRequest.options ` +
				`of type map[string]interface {}"}`},
		{"embed input type", "POST /api/embed", `{"model":"nope","input":[1,2]}`, 400, ollamaJSON,
			`{"error":"invalid input type"}`},
		{"show verbose type", "POST /api/show", `{"model":"nope","verbose":"yes"}`, 400, ollamaJSON,
			`{"error":"json: cannot unmarshal string into Go struct field ShowRequest.verbose of type bool"}`},
		{"openai chat without messages", "POST /v1/chat/completions", `{"model":"nope"}`, 400, ollamaJSON,
			`{"error":{"message":"[] is too short - 'messages'","type":"invalid_request_error",` +
				`"param":null,"code":null}}`},
		{"openai embeddings format", "POST /v1/embeddings",
			`{"model":"nope","input":"x","encoding_format":"int8"}`, 400, ollamaJSON,
			`{"error":{"message":"Invalid value for 'encoding_format' = int8. Supported values: ` +
				`['float', 'base64'].","type":"invalid_request_error","param":null,"code":null}}`},
		// The handler's own check, after the middleware: its error comes
		// back through the middleware's json.Encoder.
		{"openai embeddings token ids", "POST /v1/embeddings", `{"model":"nope","input":[1,2]}`, 400,
			"application/json", `{"error":{"message":"invalid input type","type":"invalid_request_error",` +
				`"param":null,"code":null}}` + "\n"},
		{"openai chat top_logprobs", "POST /v1/chat/completions",
			`{"model":"nope","logprobs":true,"top_logprobs":30,` + user + `}`, 400, "application/json",
			`{"error":{"message":"top_logprobs must be between 0 and 20","type":"invalid_request_error",` +
				`"param":null,"code":null}}` + "\n"},
		{"messages without max_tokens", "POST /v1/messages", `{"model":"nope",` + user + `}`, 400,
			ollamaJSON, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			method, path, _ := strings.Cut(tc.route, " ")
			e := sendWire(t, f.proxy.URL(), method, path, tc.body)
			if tc.want == "" {
				// An Anthropic body has a request id of its own.
				if e.status != tc.status || !strings.Contains(e.body,
					`"message":"max_tokens is required and must be positive"`) ||
					strings.HasSuffix(e.body, "\n") || e.header.Get("Content-Type") != tc.contentType {
					t.Errorf("%d %q %q, want Ollama's max_tokens error", e.status,
						e.header.Get("Content-Type"), e.body)
				}
				return
			}
			e.check(t, tc.status, tc.contentType, tc.want)
		})
	}
}

// TestRouterErrorsAsOllama checks the answers of Ollama's router (gin,
// with HandleMethodNotAllowed on) for a known path with a method that no
// route serves: gin's text, without a charset, and an Allow header listing
// the methods in the order in which Ollama's router registered them. Paths
// under /v1/ get the same text, because Ollama's /v1 middleware runs only
// once a route matched.
func TestRouterErrorsAsOllama(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	cases := []struct {
		method, path string
		status       int
		allow, body  string
	}{
		{"GET", "/api/generate", 405, "POST", "405 method not allowed"},
		{"PUT", "/api/tags", 405, "HEAD, GET", "405 method not allowed"},
		{"POST", "/api/ps", 405, "GET", "405 method not allowed"},
		{"GET", "/api/delete", 405, "DELETE", "405 method not allowed"},
		{"GET", "/api/blobs/sha256:abc", 405, "HEAD, POST", "405 method not allowed"},
		{"GET", "/v1/chat/completions", 405, "POST", "405 method not allowed"},
		{"POST", "/v1/models", 405, "GET", "405 method not allowed"},
		{"DELETE", "/v1/models/m", 405, "GET", "405 method not allowed"},
		{"PATCH", "/v1/messages", 405, "POST", "405 method not allowed"},
		{"OPTIONS", "/api/chat", 405, "POST", "405 method not allowed"},
		{"GET", "/nothing", 404, "", "404 page not found"},
		{"OPTIONS", "/nothing", 404, "", "404 page not found"},
		{"GET", "/v1/models/library/m", 404, "", "404 page not found"},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			e := sendWire(t, f.proxy.URL(), tc.method, tc.path, "")
			e.check(t, tc.status, "text/plain", tc.body)
			if got := e.header.Get("Allow"); got != tc.allow {
				t.Errorf("Allow %q, want %q", got, tc.allow)
			}
		})
	}
	// Ollama registers HEAD on /, /api/version and /api/tags only.
	for _, path := range []string{"/api/ps", "/v1/models", "/v1/models/m"} {
		t.Run("HEAD "+path, func(t *testing.T) {
			e := sendWire(t, f.proxy.URL(), "HEAD", path, "")
			if e.status != 405 || e.header.Get("Allow") != "GET" {
				t.Errorf("status %d, Allow %q, want 405 with Allow GET", e.status, e.header.Get("Allow"))
			}
		})
	}
	if e := sendWire(t, f.proxy.URL(), "HEAD", "/api/tags", ""); e.status != 200 {
		t.Errorf("HEAD /api/tags: status %d, want 200", e.status)
	}
}

// TestOptionsAsOllama checks OPTIONS as Ollama's middleware chain answers
// it on a loopback listener: its CORS middleware ends a preflight from an
// allowed origin with 204 on any path, and rejects a foreign origin with
// 403; its host check ends a request whose Host is a name such as
// localhost with 204; any other OPTIONS request is routed, and no route
// serves the method.
func TestOptionsAsOllama(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	base := f.proxy.URL()
	port := base[strings.LastIndexByte(base, ':')+1:]

	t.Run("no origin, IP host", func(t *testing.T) {
		e := sendWire(t, base, "OPTIONS", "/api/tags", "")
		e.check(t, 405, "text/plain", "405 method not allowed")
	})
	t.Run("no origin, localhost", func(t *testing.T) {
		e := sendWire(t, base, "OPTIONS", "/api/tags", "", "Host: localhost:"+port)
		e.check(t, 204, "", "")
	})
	t.Run("same origin", func(t *testing.T) {
		e := sendWire(t, base, "OPTIONS", "/nothing", "", "Origin: "+base)
		e.check(t, 404, "text/plain", "404 page not found")
	})
	t.Run("allowed origin, any path", func(t *testing.T) {
		for _, path := range []string{"/api/chat", "/nothing", "/v1/models/a/b"} {
			e := sendWire(t, base, "OPTIONS", path, "", "Origin: http://localhost:3000",
				"Access-Control-Request-Method: POST")
			e.check(t, 204, "", "")
			want := map[string]string{
				"Access-Control-Allow-Origin":  "http://localhost:3000",
				"Access-Control-Allow-Methods": "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS",
				"Access-Control-Max-Age":       "43200",
			}
			for name, value := range want {
				if got := e.header.Get(name); got != value {
					t.Errorf("%s: %s %q, want %q", path, name, got, value)
				}
			}
			if got := strings.Join(e.header.Values("Vary"), "|"); got !=
				"Origin|Access-Control-Request-Method|Access-Control-Request-Headers" {
				t.Errorf("%s: Vary %q, want gin-contrib/cors's three values", path, got)
			}
			if !strings.HasPrefix(e.header.Get("Access-Control-Allow-Headers"),
				"Authorization,Content-Type,User-Agent,Accept,X-Requested-With,Openai-Beta,") {
				t.Errorf("%s: Access-Control-Allow-Headers %q, want gin-contrib/cors's form", path,
					e.header.Get("Access-Control-Allow-Headers"))
			}
		}
	})
	t.Run("foreign origin", func(t *testing.T) {
		for _, method := range []string{"OPTIONS", "GET"} {
			e := sendWire(t, base, method, "/api/tags", "", "Origin: http://evil.example")
			e.check(t, 403, "", "")
		}
	})
	t.Run("localhost origin with a path is not Ollama's default", func(t *testing.T) {
		e := sendWire(t, base, "GET", "/api/version", "", "Origin: http://localhost/")
		e.check(t, 403, "", "")
	})
}

// TestUncleanPathsAsOllama sends paths that Go's ServeMux, in front of
// Ollama's router, redirects before Ollama sees them, and paths with a
// trailing slash, which gin redirects. Go 1.24, with which Ollama v0.17.4
// is built, answers every method with 301 for an unclean path.
func TestUncleanPathsAsOllama(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	cases := []struct {
		method, path     string
		status           int
		location, ctype  string
		body             string
		foreignOriginToo bool
	}{
		{"GET", "/api//tags", 301, "/api/tags", "text/html; charset=utf-8",
			"<a href=\"/api/tags\">Moved Permanently</a>.\n\n", true},
		{"GET", "/api/./tags?x=1", 301, "/api/tags?x=1", "text/html; charset=utf-8",
			"<a href=\"/api/tags?x=1\">Moved Permanently</a>.\n\n", false},
		{"POST", "/api/../api/chat", 301, "/api/chat", "", "", true},
		{"HEAD", "//api/version", 301, "/api/version", "text/html; charset=utf-8", "", false},
		{"GET", "/api/tags//", 301, "/api/tags/", "text/html; charset=utf-8",
			"<a href=\"/api/tags/\">Moved Permanently</a>.\n\n", false},
		{"GET", "/api/tags/", 301, "/api/tags", "text/html; charset=utf-8",
			"<a href=\"/api/tags\">Moved Permanently</a>.\n\n", false},
		{"POST", "/api/chat/", 307, "/api/chat", "", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			var header []string
			if tc.foreignOriginToo {
				// The mux redirects before Ollama's CORS middleware runs.
				header = append(header, "Origin: http://evil.example")
			}
			e := sendWire(t, f.proxy.URL(), tc.method, tc.path, "", header...)
			e.check(t, tc.status, tc.ctype, tc.body)
			if got := e.header.Get("Location"); got != tc.location {
				t.Errorf("Location %q, want %q", got, tc.location)
			}
		})
	}
}

// TestPassedOnContentTypesAsOllama checks the Content-Type of answers that
// the proxy passes on or merges: none where Ollama sends none (its blob
// handlers set only a status), and the node's own where it varies, as
// for a pull with "stream": false (application/json, from waitForStream).
func TestPassedOnContentTypesAsOllama(t *testing.T) {
	f := newFleet(t, ollamasim.Config{})
	base := f.proxy.URL()
	sum := sha256.Sum256([]byte("blob"))
	blob := "/api/blobs/sha256:" + hex.EncodeToString(sum[:])

	sendWire(t, base, "POST", blob, "blob").check(t, 201, "", "")
	sendWire(t, base, "HEAD", blob, "").check(t, 200, "", "")
	sendWire(t, base, "POST", "/api/pull", `{"model":"m","stream":false}`).check(t, 200, "application/json",
		`{"status":"success"}`)
	sendWire(t, base, "GET", "/api/tags", "").check(t, 200, ollamaJSON, sendWire(t, base, "GET", "/api/tags", "").body)
	if e := sendWire(t, base, "GET", "/v1/models", ""); e.header.Get("Content-Type") != "application/json" {
		t.Errorf("/v1/models: Content-Type %q, want application/json", e.header.Get("Content-Type"))
	}
	if e := sendWire(t, base, "GET", "/api/ps", ""); e.header.Get("Content-Type") != ollamaJSON {
		t.Errorf("/api/ps: Content-Type %q, want %q", e.header.Get("Content-Type"), ollamaJSON)
	}
}
