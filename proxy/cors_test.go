package proxy

import "testing"

func TestIsWildcardAddress(t *testing.T) {
	cases := []struct {
		address string
		want    bool
	}{
		{":11434", true},
		{"0.0.0.0:11434", true},
		{"[::]:11434", true},
		{"127.0.0.1:11434", false},
		{"[::1]:11434", false},
		{"localhost:11434", false},
		{"192.168.1.5:11434", false},
		{"", false},
	}
	for _, c := range cases {
		if got := isWildcardAddress(c.address); got != c.want {
			t.Errorf("isWildcardAddress(%q) = %v, want %v", c.address, got, c.want)
		}
	}
}

func TestIsLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1":             true,
		"127.0.0.1:11434":       true,
		"localhost":             true,
		"localhost:11434":       true,
		"127.0.0.10:11434":      false,
		"localhost.example.com": false,
		"":                      false,
	} {
		if got := isLoopbackHost([]byte(host)); got != want {
			t.Errorf("isLoopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}
