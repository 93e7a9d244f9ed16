package cache

import (
	"runtime"
	"strings"
	"testing"

	"github.com/llmproxy/llmproxy/config"
)

func TestClassifyKinds(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	cases := []struct {
		name, route, body string
		want              Kind
	}{
		{"embed string", "/api/embed", `{"model":"m","input":"a"}`, KindEmbed},
		{"embed array", "/api/embed", `{"model":"m","input":["a","b"]}`, KindEmbed},
		{"legacy embeddings", "/api/embeddings", `{"model":"m","prompt":"a"}`, KindEmbed},
		{"v1 embeddings", "/v1/embeddings", `{"model":"m","input":["a"]}`, KindEmbed},
		{"v1 embeddings float", "/v1/embeddings", `{"model":"m","input":"a","encoding_format":"float"}`, KindEmbed},
		{"v1 embeddings base64", "/v1/embeddings", `{"model":"m","input":"a","encoding_format":"base64"}`, KindNone},
		{"v1 embeddings tokens", "/v1/embeddings", `{"model":"m","input":[1,2,3]}`, KindNone},
		{"embed empty input", "/api/embed", `{"model":"m","input":[]}`, KindNone},
		{"embed empty string", "/api/embed", `{"model":"m","input":""}`, KindNone},
		{"embed empty item", "/api/embed", `{"model":"m","input":["a",""]}`, KindNone},
		{"embed no input", "/api/embed", `{"model":"m"}`, KindNone},
		{"embed truncate string", "/api/embed", `{"model":"m","input":"a","truncate":"no"}`, KindNone},
		{"chat temperature 0", "/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0}}`, KindResponse},
		{"chat temperature 0.0", "/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0.0}}`, KindResponse},
		{"chat seed", "/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}],"options":{"seed":42}}`, KindResponse},
		{"chat seed 0", "/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}],"options":{"seed":0}}`, KindResponse},
		{"chat random seed", "/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}],"options":{"seed":-1}}`, KindNone},
		{"chat temperature 0.7", "/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0.7}}`, KindNone},
		{"chat default options", "/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`, KindNone},
		{"chat top-level temperature", "/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}`, KindNone},
		{"chat no messages", "/api/chat", `{"model":"m","messages":[],"options":{"seed":1}}`, KindNone},
		{"generate seed", "/api/generate", `{"model":"m","prompt":"hi","options":{"seed":1}}`, KindResponse},
		{"generate load", "/api/generate", `{"model":"m","options":{"seed":1}}`, KindNone},
		{"generate empty prompt", "/api/generate", `{"model":"m","prompt":"","options":{"seed":1}}`, KindNone},
		{"generate keep_alive 0", "/api/generate", `{"model":"m","prompt":"hi","keep_alive":0,"options":{"seed":1}}`, KindNone},
		{"generate keep_alive 0s", "/api/generate", `{"model":"m","prompt":"hi","keep_alive":"0s","options":{"seed":1}}`, KindNone},
		{"generate keep_alive 5m", "/api/generate", `{"model":"m","prompt":"hi","keep_alive":"5m","options":{"seed":1}}`, KindResponse},
		{"embed keep_alive 0", "/api/embed", `{"model":"m","input":"a","keep_alive":0}`, KindNone},
		{"v1 chat temperature 0", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0}`, KindResponse},
		{"v1 chat seed", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":7}`, KindResponse},
		{"v1 chat options ignored", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0}}`, KindNone},
		{"v1 completions seed", "/v1/completions", `{"model":"m","prompt":"hi","seed":7}`, KindResponse},
		{"v1 completions no prompt", "/v1/completions", `{"model":"m","seed":7}`, KindNone},
		{"unknown route", "/api/show", `{"model":"m"}`, KindNone},
		{"missing model", "/api/embed", `{"input":"a"}`, KindNone},
		{"model not a string", "/api/embed", `{"model":1,"input":"a"}`, KindNone},
		{"invalid JSON", "/api/embed", `{"model":"m",`, KindNone},
		{"array body", "/api/embed", `["m"]`, KindNone},
		{"keys differing in case", "/api/embed", `{"model":"m","Model":"n","input":"a"}`, KindNone},
		{"nested duplicate keys", "/api/chat", `{"model":"m","messages":[{"role":"user","content":"hi"}],"options":{"seed":1,"Seed":2}}`, KindNone},
		// Ollama rejects these with 400, so the cache must not serve them.
		{"generate keep_alive not a duration", "/api/generate", `{"model":"m","prompt":"hi","keep_alive":"bogus","options":{"seed":1}}`, KindNone},
		{"generate keep_alive an array", "/api/generate", `{"model":"m","prompt":"hi","keep_alive":[1],"options":{"seed":1}}`, KindNone},
		{"generate stream a number", "/api/generate", `{"model":"m","prompt":"hi","stream":0,"options":{"seed":1}}`, KindNone},
		{"generate stream a string", "/api/generate", `{"model":"m","prompt":"hi","stream":"false","options":{"seed":1}}`, KindNone},
		{"generate prompt a number", "/api/generate", `{"model":"m","prompt":5,"options":{"seed":1}}`, KindNone},
		{"generate null members", "/api/generate", `{"model":"m","prompt":"hi","stream":null,"keep_alive":null,"system":null,"options":{"seed":1}}`, KindResponse},
		{"generate keep_alive seconds", "/api/generate", `{"model":"m","prompt":"hi","keep_alive":300,"options":{"seed":1}}`, KindResponse},
		{"chat messages an object", "/api/chat", `{"model":"m","messages":{"role":"user"},"options":{"seed":1}}`, KindNone},
		{"embed keep_alive not a duration", "/api/embed", `{"model":"m","input":"a","keep_alive":"bogus"}`, KindNone},
		{"embed input a number", "/api/embed", `{"model":"m","input":5}`, KindNone},
		{"v1 chat stream a string", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":7,"stream":"yes"}`, KindNone},
		{"v1 chat stream a number", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":7,"stream":0}`, KindNone},
		{"v1 chat stream_options a number", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":7,"stream_options":5}`, KindNone},
		{"v1 chat include_usage a string", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":7,"stream":true,"stream_options":{"include_usage":"yes"}}`, KindNone},
		{"v1 chat seed a string", "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":"7"}`, KindNone},
		{"v1 embeddings input an object", "/v1/embeddings", `{"model":"m","input":{"a":1}}`, KindNone},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			p := tc.Classify(Request{Route: tt.route, Body: []byte(tt.body)})
			if p.Kind != tt.want {
				t.Fatalf("Kind = %d, want %d (reason %q)", p.Kind, tt.want, p.Reason)
			}
			if p.Kind == KindNone && p.Reason == "" {
				t.Error("KindNone without a reason")
			}
			if p.Kind != KindNone && len(p.Key) != 64 {
				t.Errorf("Key = %q, want 64 hex digits", p.Key)
			}
		})
	}
}

func TestClassifyGenerateNever(t *testing.T) {
	tc := newTestCache(t, testOptions{cfg: config.Cache{Generate: "never"}})
	p := tc.Classify(Request{Route: "/api/generate",
		Body: []byte(`{"model":"m","prompt":"hi","options":{"temperature":0}}`)})
	if p.Kind != KindNone {
		t.Errorf("generate with cache.generate never: Kind = %d, want KindNone", p.Kind)
	}
	p = tc.Classify(Request{Route: "/api/embed", Body: []byte(`{"model":"m","input":"a"}`)})
	if p.Kind != KindEmbed {
		t.Errorf("embed with cache.generate never: Kind = %d, want KindEmbed", p.Kind)
	}
}

func TestClassifyDisabled(t *testing.T) {
	tc := newTestCache(t, testOptions{cfg: config.Cache{Enabled: boolPtr(false)}})
	p := tc.Classify(Request{Route: "/api/embed", Body: []byte(`{"model":"m","input":"a"}`)})
	if p.Kind != KindNone {
		t.Errorf("disabled cache: Kind = %d, want KindNone", p.Kind)
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	cases := []config.Cache{
		{Generate: "sometimes"},
		{L1: config.CacheL1{MaxBytes: -1}},
		{L1: config.CacheL1{TTL: -1}},
		{L2: config.CacheL2{TTL: -1}},
	}
	for _, cfg := range cases {
		if c, err := New(cfg, nil, config.Redis{}, nil, nil); err == nil {
			c.Close()
			t.Errorf("New(%+v) succeeded, want an error", cfg)
		}
	}
}

func TestClassifyDelivery(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	cases := []struct {
		name, route, body    string
		stream, includeUsage bool
	}{
		{"api default", "/api/chat", `{"model":"m",` + msgs + `,"options":{"seed":1}}`, true, false},
		{"api stream false", "/api/chat", `{"model":"m",` + msgs + `,"stream":false,"options":{"seed":1}}`, false, false},
		{"v1 default", "/v1/chat/completions", `{"model":"m",` + msgs + `,"seed":1}`, false, false},
		{"v1 stream", "/v1/chat/completions", `{"model":"m",` + msgs + `,"seed":1,"stream":true}`, true, false},
		{"v1 usage", "/v1/chat/completions",
			`{"model":"m",` + msgs + `,"seed":1,"stream":true,"stream_options":{"include_usage":true}}`, true, true},
		{"embed", "/api/embed", `{"model":"m","input":"a","stream":true}`, false, false},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			p := tc.plan(t, tt.route, tt.body)
			if p.Stream != tt.stream {
				t.Errorf("Stream = %v, want %v", p.Stream, tt.stream)
			}
			if p.IncludeUsage != tt.includeUsage {
				t.Errorf("IncludeUsage = %v, want %v", p.IncludeUsage, tt.includeUsage)
			}
		})
	}
}

func TestKeyStable(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	base := `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0,"num_predict":20}}`
	same := map[string]string{
		"layout":           "{ \"options\" : {\"num_predict\":20, \"temperature\":0},\n \"messages\":[{\"content\":\"hi\",\"role\":\"user\"}], \"model\":\"tiny\" }",
		"latest tag":       `{"model":"tiny:latest","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0,"num_predict":20}}`,
		"model case":       `{"model":"TINY:Latest","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0,"num_predict":20}}`,
		"default prefix":   `{"model":"registry.ollama.ai/library/tiny","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0,"num_predict":20}}`,
		"stream":           `{"model":"tiny","stream":false,"messages":[{"role":"user","content":"hi"}],"options":{"temperature":0,"num_predict":20}}`,
		"keep_alive":       `{"model":"tiny","keep_alive":"1h","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0,"num_predict":20}}`,
		"number form":      `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0.0,"num_predict":2e1}}`,
		"string escapes":   `{"model":"tiny","messages":[{"role":"user","content":"\u0068i"}],"options":{"temperature":0,"num_predict":20}}`,
		"negative zero":    `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"options":{"temperature":-0,"num_predict":20}}`,
		"null member":      `{"model":"tiny","format":null,"messages":[{"role":"user","content":"hi"}],"options":{"temperature":0,"num_predict":20}}`,
		"escaped key name": `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"options":{"temperatur\u0065":0,"num_predict":20}}`,
	}
	want := tc.plan(t, "/api/chat", base).Key
	for name, body := range same {
		t.Run(name, func(t *testing.T) {
			if got := tc.plan(t, "/api/chat", body).Key; got != want {
				t.Errorf("key differs from the base body's")
			}
		})
	}
}

func TestKeyStableV1StreamOptions(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	a := tc.plan(t, "/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":1}`)
	b := tc.plan(t, "/v1/chat/completions",
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"seed":1,"stream":true,"stream_options":{"include_usage":true}}`)
	if a.Key != b.Key {
		t.Error("stream and stream_options change the /v1 key")
	}
}

func TestKeySensitive(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	base := `{"model":"tiny","prompt":"hi","options":{"temperature":0}`
	variants := map[string]string{
		"prompt":      `{"model":"tiny","prompt":"ho","options":{"temperature":0}`,
		"model":       `{"model":"tiny2","prompt":"hi","options":{"temperature":0}`,
		"model tag":   `{"model":"tiny:q4","prompt":"hi","options":{"temperature":0}`,
		"options":     `{"model":"tiny","prompt":"hi","options":{"temperature":0,"num_predict":5}`,
		"seed":        `{"model":"tiny","prompt":"hi","options":{"temperature":0,"seed":1}`,
		"format":      base + `,"format":"json"`,
		"schema":      base + `,"format":{"type":"object"}`,
		"think":       base + `,"think":true`,
		"system":      base + `,"system":"be brief"`,
		"template":    base + `,"template":"{{ .Prompt }}"`,
		"images":      base + `,"images":["aGk="]`,
		"raw":         base + `,"raw":true`,
		"suffix":      base + `,"suffix":"end"`,
		"context":     base + `,"context":[1,2]`,
		"tools":       base + `,"tools":[{"type":"function","function":{"name":"f"}}]`,
		"big seed":    `{"model":"tiny","prompt":"hi","options":{"seed":9007199254740993}`,
		"bigger seed": `{"model":"tiny","prompt":"hi","options":{"seed":9007199254740992}`,
	}
	seen := map[string]string{tc.plan(t, "/api/generate", base+"}").Key: "base"}
	for name, body := range variants {
		key := tc.plan(t, "/api/generate", body+"}").Key
		if other, ok := seen[key]; ok {
			t.Errorf("%s: same key as %s", name, other)
		}
		seen[key] = name
	}

	chat := `{"model":"tiny","messages":[{"role":"user","content":"hi"}],"options":{"seed":1}}`
	if tc.plan(t, "/api/chat", chat).Key == tc.plan(t, "/v1/chat/completions",
		`{"model":"tiny","messages":[{"role":"user","content":"hi"}],"seed":1}`).Key {
		t.Error("/api/chat and /v1/chat/completions share a key")
	}
}

func TestNormalizeModel(t *testing.T) {
	cases := map[string]string{
		"":                                "",
		"tiny":                            "tiny:latest",
		"tiny:latest":                     "tiny:latest",
		"tiny:q4":                         "tiny:q4",
		"library/tiny":                    "tiny:latest",
		"registry.ollama.ai/library/Tiny": "tiny:latest",
		"TINY:Q4":                         "tiny:q4",
		"registry.local:5000/m":           "registry.local:5000/m:latest",
		"registry.local:5000/m:v1":        "registry.local:5000/m:v1",
		"hf.co/org/model-GGUF:Q4_K_M":     "hf.co/org/model-gguf:q4_k_m",
	}
	for in, want := range cases {
		if got := NormalizeModel(in); got != want {
			t.Errorf("NormalizeModel(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseCacheControl(t *testing.T) {
	cases := []struct {
		header           string
		noCache, noStore bool
	}{
		{"", false, false},
		{"no-cache", true, false},
		{"no-store", false, true},
		{"No-Cache, no-store", true, true},
		{"max-age=0, no-store", false, true},
		{"no-cache=\"x\"", true, false},
		{"no-cacheX", false, false},
	}
	for _, tt := range cases {
		noCache, noStore := ParseCacheControl(tt.header)
		if noCache != tt.noCache || noStore != tt.noStore {
			t.Errorf("ParseCacheControl(%q) = %v, %v, want %v, %v",
				tt.header, noCache, noStore, tt.noCache, tt.noStore)
		}
	}
}

func BenchmarkKey(b *testing.B) {
	c, err := New(config.Cache{}, nil, config.Redis{}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	body := []byte(`{"model":"llama3.2","stream":true,"messages":[` +
		`{"role":"system","content":"You are a helpful assistant. Response briefly."},` +
		`{"role":"user","content":"What is the capital of France, and why is it famous?"},` +
		`{"role":"assistant","content":"Paris. It is famous for art, food and the Eiffel Tower."},` +
		`{"role":"user","content":"Name three museums there."}],` +
		`"options":{"temperature":0,"num_ctx":4096,"top_k":40,"stop":["\n\n"]},"keep_alive":"5m"}`)
	req := Request{Route: "/api/chat", Body: body}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if c.Classify(req).Kind != KindResponse {
			b.Fatal("not cacheable")
		}
	}
}

// TestClassifyLargeBodyNotRetained classifies a 32 MiB request. A pooled
// parser keeps a copy of its last document, so after one garbage
// collection, which keeps the pool's entries, the heap must not still
// hold such a copy.
func TestClassifyLargeBodyNotRetained(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	body := []byte(`{"model":"m","prompt":"` + strings.Repeat("x", 32<<20) + `","options":{"seed":1}}`)
	if p := tc.Classify(Request{Route: "/api/generate", Body: body}); p.Kind != KindResponse {
		t.Fatalf("Kind = %d, want KindResponse (reason %q)", p.Kind, p.Reason)
	}
	body = nil
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if retained := int64(after.HeapAlloc) - int64(before.HeapAlloc); retained > 8<<20 {
		t.Errorf("the heap holds %d MiB more after classifying a 32 MiB body, want under 8 MiB", retained>>20)
	}
}
