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
