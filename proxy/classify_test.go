package proxy

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/valyala/fastjson"
)

func TestClassify(t *testing.T) {
	cases := []struct {
		method, path string
		how          handling
		name         string
		family       apiFamily
	}{
		{"GET", "/", handleRoot, "/", apiOllama},
		{"HEAD", "/", handleRoot, "/", apiOllama},
		{"POST", "/api/chat", handleRouted, "/api/chat", apiOllama},
		{"POST", "/api/pull", handleFanout, "/api/pull", apiOllama},
		{"DELETE", "/api/delete", handleFanout, "/api/delete", apiOllama},
		{"HEAD", "/api/blobs/sha256:abc", handleSticky, "/api/blobs", apiOllama},
		{"POST", "/api/blobs/sha256:abc", handleSticky, "/api/blobs", apiOllama},
		{"POST", "/v1/chat/completions", handleRouted, "/v1/chat/completions", apiOpenAI},
		{"GET", "/v1/models/llama3", handleModel, "/v1/models/{model}", apiOpenAI},
		{"POST", "/v1/messages", handleRouted, "/v1/messages", apiAnthropic},
		{"GET", "/api/chat", handleMethodNotAllowed, "/api/chat", apiOllama},
		{"HEAD", "/api/generate", handleMethodNotAllowed, "/api/generate", apiOllama},
		{"DELETE", "/api/tags", handleMethodNotAllowed, "/api/tags", apiOllama},
		{"GET", "/api/delete", handleMethodNotAllowed, "/api/delete", apiOllama},
		{"GET", "/api/blobs/sha256:abc", handleMethodNotAllowed, "/api/blobs", apiOllama},
		{"DELETE", "/v1/models/llama3", handleMethodNotAllowed, "/v1/models/{model}", apiOllama},
		{"GET", "/v1/chat/completions", handleMethodNotAllowed, "/v1/chat/completions", apiOllama},
		{"POST", "/nothing", handleNotFound, "other", apiOllama},
		{"GET", "/admin/nodes", handleAdmin, "/admin", apiOllama},
		{"GET", "/administrator", handleNotFound, "other", apiOllama},
		{"GET", "/v1/models/", handleRedirect, "other", apiOllama},
		{"POST", "/api/generate/", handleRedirect, "other", apiOllama},
		{"GET", "/api/generate/", handleFallback, "/api/*", apiOllama},
		{"GET", "/api/status", handleFallback, "/api/*", apiOllama},
		{"POST", "/v1/audio/transcriptions", handleFallback, "/v1/*", apiOpenAI},
		{"POST", "/v1/messages/count_tokens", handleFallback, "/v1/*", apiAnthropic},
		{"GET", "/v1/models/library/m", handleNotFound, "other", apiOllama},
		{"POST", "/v1/models/library/m", handleNotFound, "other", apiOllama},
		{"GET", "/v1/models/library/m/", handleNotFound, "other", apiOllama},
		{"POST", "/v1/models/m/", handleNotFound, "other", apiOllama},
		// OPTIONS is routed as any method without a route: handle responds to
		// preflights before routing.
		{"OPTIONS", "/v1/models/library/m", handleNotFound, "other", apiOllama},
		{"OPTIONS", "/api/status", handleFallback, "/api/*", apiOllama},
		{"OPTIONS", "/api/tags", handleMethodNotAllowed, "/api/tags", apiOllama},
		{"OPTIONS", "/nothing", handleNotFound, "other", apiOllama},
		// Ollama serves HEAD on /, /api/version and /api/tags only.
		{"HEAD", "/api/tags", handleTags, "/api/tags", apiOllama},
		{"HEAD", "/api/ps", handleMethodNotAllowed, "/api/ps", apiOllama},
		{"HEAD", "/v1/models", handleMethodNotAllowed, "/v1/models", apiOllama},
		{"HEAD", "/v1/models/m", handleMethodNotAllowed, "/v1/models/{model}", apiOllama},
		{"GET", "/api", handleNotFound, "other", apiOllama},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			r := classify([]byte(tc.method), []byte(tc.path))
			if r.how != tc.how || r.name != tc.name || r.family != tc.family {
				t.Errorf("got %+v, want how %d name %s family %d", r, tc.how, tc.name, tc.family)
			}
		})
	}
}

func TestInspectDefaults(t *testing.T) {
	chat := postRoutes["/api/chat"]
	oaChat := postRoutes["/v1/chat/completions"]
	gen := postRoutes["/api/generate"]
	embed := postRoutes["/api/embed"]
	embeddings := postRoutes["/api/embeddings"]
	cases := []struct {
		name string
		r    route
		body string
		want fields
	}{
		{"ollama streams by default", chat, `{"model":"m","messages":[{"role":"user"}]}`,
			fields{model: "m:latest", rawModel: "m", stream: true}},
		{"ollama stream false", chat, `{"model":"m","stream":false,"messages":[1]}`,
			fields{model: "m:latest", rawModel: "m"}},
		{"openai does not stream by default", oaChat, `{"model":"m","max_tokens":9}`,
			fields{model: "m:latest", rawModel: "m", reserveTokens: 9}},
		{"preload", gen, `{"model":"m"}`,
			fields{model: "m:latest", rawModel: "m", stream: true, preload: true}},
		{"unload", gen, `{"model":"m","keep_alive":0}`,
			fields{model: "m:latest", rawModel: "m", stream: true, preload: true, unload: true}},
		{"unload string", gen, `{"model":"m","keep_alive":"0s","prompt":"x"}`,
			fields{model: "m:latest", rawModel: "m", stream: true, unload: true}},
		{"embed unload", embed, `{"model":"m","keep_alive":0}`,
			fields{model: "m:latest", rawModel: "m", preload: true, unload: true, reserveTokens: 1}},
		{"embed null input", embed, `{"model":"m","input":null}`,
			fields{model: "m:latest", rawModel: "m", preload: true, reserveTokens: 1}},
		{"embed empty string", embed, `{"model":"m","input":""}`,
			fields{model: "m:latest", rawModel: "m", preload: true, reserveTokens: 1}},
		{"embed no inputs", embed, `{"model":"m","input":[]}`,
			fields{model: "m:latest", rawModel: "m", preload: true, reserveTokens: 1}},
		{"embed one empty input", embed, `{"model":"m","input":[""],"keep_alive":0}`,
			fields{model: "m:latest", rawModel: "m", unload: true, reserveTokens: 1}},
		{"embed input", embed, `{"model":"m","input":"abcdefgh"}`,
			fields{model: "m:latest", rawModel: "m", reserveTokens: 2}},
		{"embeddings unload", embeddings, `{"model":"m","prompt":"","keep_alive":"0"}`,
			fields{model: "m:latest", rawModel: "m", preload: true, unload: true, reserveTokens: 1}},
		{"embeddings prompt", embeddings, `{"model":"m","prompt":"x","keep_alive":0}`,
			fields{model: "m:latest", rawModel: "m", unload: true, reserveTokens: 1}},
		{"options", gen, `{"model":"a/b:7b","prompt":"x","options":{"num_ctx":8192,"num_predict":50}}`,
			fields{model: "a/b:7b", rawModel: "a/b:7b", stream: true, numCtx: 8192, reserveTokens: 50}},
	}
	var p fastjson.Parser
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := inspect(&p, tc.r, []byte(tc.body), false)
			if err != nil {
				t.Fatal(err)
			}
			hasUser := strings.Contains(tc.body, `"role":"user"`)
			if (got.affinity != 0) != hasUser {
				t.Errorf("affinity %x for a body with a user message: %v", got.affinity, hasUser)
			}
			got.affinity = 0
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func FuzzClassifyInspect(f *testing.F) {
	f.Add("POST", "/api/chat", `{"model":"m","messages":[]}`)
	f.Add("GET", "/v1/models/x", ``)
	f.Add("POST", "/v1/chat/completions", `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`)
	f.Add("POST", "/api/generate", `{"model":"m","keep_alive":"0","options":{"num_ctx":"x"}}`)
	f.Add("POST", "/api/chat", `{"model":"m"}0`)
	var p fastjson.Parser
	f.Fuzz(func(t *testing.T, method, path, body string) {
		r := classify([]byte(method), []byte(path))
		if r.name == "" {
			t.Fatalf("route without a name for %s %s", method, path)
		}
		if _, err := inspect(&p, r, []byte(body), false); err == nil {
			// Ollama binds a body with json.Decoder, which reads the first
			// value and leaves what follows it, so only that value must be
			// an object.
			var first json.RawMessage
			if derr := json.NewDecoder(strings.NewReader(body)).Decode(&first); derr != nil ||
				first[0] != '{' {
				t.Fatalf("inspect accepted %q, whose first value is not a JSON object", body)
			}
		}
	})
}

func BenchmarkClassifyInspect(b *testing.B) {
	body := []byte(`{"model":"llama3:8b","messages":[{"role":"user","content":"hello there"}],` +
		`"options":{"temperature":0.7,"num_ctx":4096},"stream":true}`)
	var p fastjson.Parser
	b.ReportAllocs()
	for b.Loop() {
		r := classify([]byte("POST"), []byte("/api/chat"))
		if _, err := inspect(&p, r, body, false); err != nil {
			b.Fatal(err)
		}
	}
}

func TestConversationKey(t *testing.T) {
	var p fastjson.Parser
	key := func(body string) uint64 {
		v, err := p.Parse(body)
		if err != nil {
			t.Fatal(err)
		}
		return conversationKey("m:latest", v.GetArray("messages"))
	}
	first := key(`{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}`)
	later := key(`{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"},` +
		`{"role":"assistant","content":"hello"},{"role":"user","content":"more"}]}`)
	other := key(`{"messages":[{"role":"system","content":"be long"},{"role":"user","content":"hi"}]}`)
	if first == 0 || first != later {
		t.Errorf("turns of one conversation: %x and %x, want equal and non-zero", first, later)
	}
	if other == first {
		t.Error("another system prompt gave the same key")
	}
	if key(`{"messages":[{"role":"assistant","content":"x"}]}`) != 0 {
		t.Error("a chat without a user message has a key")
	}
}

func TestInspectShortensParseErrors(t *testing.T) {
	var p fastjson.Parser
	tests := []struct {
		name, body, want string
	}{
		// Go's encoding/json words the syntax errors, as in Ollama.
		{"truncated", `{"model":`, "unexpected EOF"},
		{"white space", " \n\t ", "missing request body"},
		{"deep", `{"model":"m","x":` + strings.Repeat("[", 400) + strings.Repeat("]", 400) + `}`,
			"it exceeds 300"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := inspect(&p, classify([]byte("POST"), []byte("/api/chat")), []byte(tt.body), false)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if len(err.Error()) > 400 {
				t.Errorf("error of %d bytes, want at most 400", len(err.Error()))
			}
		})
	}
}

func TestInspectReadsTokenCounts(t *testing.T) {
	var p fastjson.Parser
	tests := []struct {
		num  string
		want int64
	}{
		{"2000", 2000},
		{"2000.0", 2000},
		{"2e3", 2000},
		{"-1", -1},
		{"99999999999999999999", math.MaxInt64},
		{"1e30", math.MaxInt64},
		{`"2000"`, 0},
	}
	for _, tt := range tests {
		body := `{"model":"m","prompt":"x","options":{"num_predict":` + tt.num + `}}`
		f, err := inspect(&p, classify([]byte("POST"), []byte("/api/generate")), []byte(body), false)
		if err != nil {
			t.Fatalf("num_predict %s: %v", tt.num, err)
		}
		if f.reserveTokens != tt.want {
			t.Errorf("num_predict %s: max tokens %d, want %d", tt.num, f.reserveTokens, tt.want)
		}
		body = `{"model":"m","messages":[],"max_tokens":` + tt.num + `}`
		f, err = inspect(&p, classify([]byte("POST"), []byte("/v1/chat/completions")), []byte(body), false)
		if err != nil {
			t.Fatalf("max_tokens %s: %v", tt.num, err)
		}
		if want := max(tt.want, 0); f.reserveTokens != want {
			t.Errorf("max_tokens %s: max tokens %d, want %d", tt.num, f.reserveTokens, want)
		}
	}
}

func TestPromptTokensCountsText(t *testing.T) {
	var p fastjson.Parser
	text := strings.Repeat("a", 400) // 100 tokens at four bytes a token
	image := strings.Repeat("B", 4000)
	tests := []struct {
		name string
		body string
		want int64
	}{
		{"generate", `{"model":"llama3:8b","prompt":"` + text + `","keep_alive":"5m"}`, 100},
		{"generate with system and image", `{"model":"m","prompt":"` + text + `","system":"` + text +
			`","images":["` + image + `"]}`, 200},
		{"chat", `{"model":"m","messages":[{"role":"user","content":"` + text + `","images":["` +
			image + `"]}],"options":{"num_predict":5,"stop":["\n"]}}`, 102},
		{"openai parts", `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"` +
			text + `"},{"type":"image_url","image_url":{"url":"data:image/png;base64,` + image +
			`"}}]}]}`, 105},
		{"anthropic image", `{"model":"m","system":"` + text + `","messages":[{"role":"user",` +
			`"content":[{"type":"image","source":{"type":"base64","media_type":"image/png","data":"` +
			image + `"}}]}]}`, 103},
		{"tools count", `{"model":"m","messages":[],"tools":[{"type":"function","function":` +
			`{"name":"f","description":"` + text + `"}}]}`, 103},
		{"no text", `{"model":"m"}`, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := p.Parse(tt.body)
			if err != nil {
				t.Fatal(err)
			}
			if got := promptTokens(v); got != tt.want {
				t.Errorf("promptTokens = %d, want %d", got, tt.want)
			}
		})
	}
}
