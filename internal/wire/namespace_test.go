package wire

import "testing"

func TestModelNamespace(t *testing.T) {
	tests := []struct{ name, want string }{
		{"llama3", "library"},
		{"llama3:8b", "library"},
		{"library/llama3:8b", "library"},
		{"registry.ollama.ai/library/llama3", "library"},
		{"myuser/m:latest", "myuser"},
		{"MyUser/m", "MyUser"},
		{"hf.co/foo/bar:Q4_K_M", "foo"},
		{"example.com:5000/ns/m", "ns"},
		{"example.com:5000/ns/m:v1", "ns"},
		{"a/b/c/d", "c"},
		{"ns/:tag", "ns"},
		{":tag", "library"},
		{"", "library"},
		{"/llama3", "!MISSING!"},
		{"host//llama3", "!MISSING!"},
	}
	for _, tt := range tests {
		if got := ModelNamespace(tt.name); got != tt.want {
			t.Errorf("ModelNamespace(%q) = %q, want %q", tt.name, got, tt.want)
		}
	}
}
