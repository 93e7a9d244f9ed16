package wire

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestNormalizeModel(t *testing.T) {
	cases := map[string]string{
		"llama3":                            "llama3:latest",
		"llama3:8b":                         "llama3:8b",
		"registry.ollama.ai/library/llama3": "llama3:latest",
		"library/qwen2.5:0.5b":              "qwen2.5:0.5b",
		"hf.co/bartowski/Llama-3.2-1B-GGUF": "hf.co/bartowski/Llama-3.2-1B-GGUF:latest",
		"hf.co/user/model:Q4_K_M":           "hf.co/user/model:Q4_K_M",
		"  spaced  ":                        "spaced:latest",
		"":                                  "",
	}
	for in, want := range cases {
		if got := NormalizeModel(in); got != want {
			t.Errorf("NormalizeModel(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestModelKey(t *testing.T) {
	cases := map[string]string{
		"Llama3.2:1B":                       "llama3.2:1b",
		"REGISTRY.OLLAMA.AI/LIBRARY/LLAMA3": "llama3:latest",
		"registry.ollama.ai/library/Llama3": "llama3:latest",
		"hf.co/user/Model:Q4_K_M":           "hf.co/user/model:q4_k_m",
		"":                                  "",
	}
	for in, want := range cases {
		if got := ModelKey(in); got != want {
			t.Errorf("ModelKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"0.25.0", "0.25.0", 0},
		{"0.9.0", "0.25.0", -1},
		{"0.25.0-rc0-10-gf63eea3d2", "0.25.0", -1},
		{"0.25.1", "0.25.0-rc1", 1},
		{"v1.0.0", "0.99.9", 1},
		{"garbage", "0.1.0", -1},
	}
	for _, tc := range cases {
		if got := CompareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestErrorBodiesAreJSON(t *testing.T) {
	msg := "bad \"quote\" \\ and\ncontrol \x01 ünïcode"
	var o struct{ Error string }
	if err := json.Unmarshal(OllamaError(msg), &o); err != nil {
		t.Errorf("OllamaError: invalid JSON: %v", err)
	}
	if o.Error != msg {
		t.Errorf("OllamaError: error = %q, want %q", o.Error, msg)
	}
	var oa struct {
		Error struct {
			Message, Type string
			Param, Code   any
		}
	}
	if err := json.Unmarshal(OpenAIError(msg, "api_error"), &oa); err != nil {
		t.Errorf("OpenAIError: invalid JSON: %v", err)
	}
	if oa.Error.Message != msg {
		t.Errorf("OpenAIError: message = %q, want %q", oa.Error.Message, msg)
	}
	if oa.Error.Type != "api_error" {
		t.Errorf("OpenAIError: type = %q, want %q", oa.Error.Type, "api_error")
	}
}

// TestErrorBodiesReplaceInvalidUTF8 checks that a message quoting bytes
// that are not UTF-8 gives a body that strict JSON parsers accept, with
// U+FFFD for each invalid byte, as encoding/json writes it.
func TestErrorBodiesReplaceInvalidUTF8(t *testing.T) {
	msg := "model 'a\xffb\xc3' not found, ü kept"
	want := `model 'a\ufffdb\ufffd' not found, ü kept`
	for name, body := range map[string][]byte{
		"ollama":    OllamaError(msg),
		"openai":    OpenAIError(msg, "not_found_error"),
		"anthropic": AnthropicError(msg, "not_found_error", ""),
	} {
		if !utf8.Valid(body) {
			t.Errorf("%s: body %q is not UTF-8", name, body)
		}
		var doc map[string]any
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Errorf("%s: invalid JSON %q: %v", name, body, err)
		}
		if !strings.Contains(string(body), want) {
			t.Errorf("%s: body %q lacks %q", name, body, want)
		}
	}
	if got, want := string(OllamaError(msg)), `{"error":"model 'a\ufffdb\ufffd' not found, ü kept"}`; got != want {
		t.Errorf("OllamaError = %s, want %s", got, want)
	}
}

func TestOpenAIErrorType(t *testing.T) {
	tests := []struct {
		status int
		want   string
	}{
		{400, "invalid_request_error"},
		{401, "authentication_error"},
		{403, "permission_error"},
		{404, "not_found_error"},
		{405, "invalid_request_error"},
		{408, "invalid_request_error"},
		{413, "invalid_request_error"},
		{422, "invalid_request_error"},
		{429, "rate_limit_error"},
		{431, "invalid_request_error"},
		{500, "api_error"},
		{502, "api_error"},
		{504, "api_error"},
		{503, "api_error"},
	}
	for _, tt := range tests {
		if got := OpenAIErrorType(tt.status); got != tt.want {
			t.Errorf("OpenAIErrorType(%d) = %q, want %q", tt.status, got, tt.want)
		}
	}
}

func TestAnthropicError(t *testing.T) {
	got := string(AnthropicError("model \"x\" not found", "not_found_error", "req_1"))
	want := `{"type":"error","error":{"type":"not_found_error","message":"model \"x\" not found"},"request_id":"req_1"}`
	if got != want {
		t.Errorf("AnthropicError with a request id = %s, want %s", got, want)
	}
	got = string(AnthropicError("node failed", "api_error", ""))
	want = `{"type":"error","error":{"type":"api_error","message":"node failed"}}`
	if got != want {
		t.Errorf("AnthropicError without a request id = %s, want %s", got, want)
	}
}

func TestAnthropicErrorType(t *testing.T) {
	tests := []struct {
		status int
		want   string
	}{
		{400, "invalid_request_error"},
		{401, "authentication_error"},
		{403, "permission_error"},
		{404, "not_found_error"},
		{405, "invalid_request_error"},
		{408, "invalid_request_error"},
		{413, "request_too_large"},
		{422, "invalid_request_error"},
		{429, "rate_limit_error"},
		{431, "invalid_request_error"},
		{500, "api_error"},
		{502, "api_error"},
		{503, "overloaded_error"},
		{504, "api_error"},
		{529, "overloaded_error"},
	}
	for _, tt := range tests {
		if got := AnthropicErrorType(tt.status); got != tt.want {
			t.Errorf("AnthropicErrorType(%d) = %q, want %q", tt.status, got, tt.want)
		}
	}
}

func FuzzErrorBodies(f *testing.F) {
	f.Add("plain")
	f.Add("\x00\x1f\"\\")
	f.Fuzz(func(t *testing.T, msg string) {
		if !json.Valid(OllamaError(msg)) {
			t.Fatalf("OllamaError(%q) is not JSON", msg)
		}
		if !json.Valid(OpenAIError(msg, "x")) {
			t.Fatalf("OpenAIError(%q) is not JSON", msg)
		}
		if !json.Valid(AnthropicError(msg, "x", msg)) {
			t.Fatalf("AnthropicError(%q) is not JSON", msg)
		}
	})
}
