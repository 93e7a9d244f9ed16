package ratelimit

import "testing"

func TestKeyAllows(t *testing.T) {
	cases := []struct {
		name    string
		allowed []string
		model   string
		want    bool
	}{
		{"empty list allows all", nil, "anything:7b", true},
		{"exact with tag", []string{"llama3:8b"}, "llama3:8b", true},
		{"other tag", []string{"llama3:8b"}, "llama3:70b", false},
		{"no tag means latest", []string{"llama3"}, "llama3:latest", true},
		{"request without tag", []string{"llama3:latest"}, "llama3", true},
		{"request without tag, other tag allowed", []string{"llama3:8b"}, "llama3", false},
		{"case insensitive", []string{"Llama3:8B"}, "LLAMA3:8b", true},
		{"library namespace", []string{"llama3"}, "library/llama3", true},
		{"full registry name", []string{"llama3:8b"}, "registry.ollama.ai/library/llama3:8b", true},
		{"user namespace", []string{"llama3"}, "someone/llama3", false},
		{"registry with port", []string{"host:5000/team/model"}, "host:5000/team/model:latest", true},
		{"wildcard tags", []string{"llama3:*"}, "llama3:70b", true},
		{"wildcard tags, bare name", []string{"llama3:*"}, "llama3", true},
		{"wildcard tags, other model", []string{"llama3:*"}, "llama3.1:8b", false},
		{"wildcard prefix", []string{"llama3*"}, "llama3.1:8b", true},
		{"wildcard prefix, other", []string{"llama3*"}, "mistral:7b", false},
		{"star allows all", []string{"*"}, "mistral:7b", true},
		{"second entry", []string{"qwen2:*", "mistral"}, "mistral", true},
		{"spaces trimmed", []string{" mistral "}, " mistral:latest", true},
		{"empty model", []string{"mistral"}, "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k := &Key{models: newModelPatterns(tc.allowed)}
			if got := k.Allows(tc.model); got != tc.want {
				t.Errorf("Allows(%q) with %q = %v, want %v", tc.model, tc.allowed, got, tc.want)
			}
		})
	}
}
