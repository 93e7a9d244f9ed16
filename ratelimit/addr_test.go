package ratelimit

import (
	"net"
	"net/netip"
	"testing"

	"github.com/llmproxy/llmproxy/config"
)

func TestClientAddr(t *testing.T) {
	l := newTestLimiter(t, Options{RateLimit: config.RateLimit{
		TrustedProxies: []string{"10.0.0.0/8", "192.168.1.7", "fd00::/8", "::ffff:172.16.0.0/108"},
	}})
	cases := []struct {
		name string
		peer string
		xff  string
		want string
	}{
		{"untrusted peer ignores header", "203.0.113.9", "198.51.100.1", "203.0.113.9"},
		{"trusted peer without header", "10.1.2.3", "", "10.1.2.3"},
		{"trusted peer, one hop", "10.1.2.3", "198.51.100.1", "198.51.100.1"},
		{"single trusted address", "192.168.1.7", "198.51.100.1", "198.51.100.1"},
		{"neighbour of single address", "192.168.1.8", "198.51.100.1", "192.168.1.8"},
		{"spoofed left entries ignored", "10.1.2.3", "1.1.1.1, 198.51.100.1", "198.51.100.1"},
		{"trusted chain skipped", "10.1.2.3", "1.1.1.1, 198.51.100.1, 10.9.9.9, 10.8.8.8",
			"198.51.100.1"},
		{"all trusted", "10.1.2.3", "10.4.4.4, 10.5.5.5", "10.4.4.4"},
		{"garbage from trusted hop", "10.1.2.3", "1.1.1.1, unknown, 10.5.5.5", "10.5.5.5"},
		{"garbage right after peer", "10.1.2.3", "unknown", "10.1.2.3"},
		{"entry with port", "10.1.2.3", "198.51.100.1:4711", "198.51.100.1"},
		{"ipv6 entry with port", "10.1.2.3", "[2001:db8::1]:443", "2001:db8::1"},
		{"ipv6 peer trusted", "fd00::1", "2001:db8::5", "2001:db8::5"},
		{"mapped peer", "::ffff:10.1.2.3", "198.51.100.1", "198.51.100.1"},
		{"mapped entry", "10.1.2.3", "::ffff:198.51.100.1", "198.51.100.1"},
		{"mapped trusted CIDR", "172.16.0.1", "198.51.100.1", "198.51.100.1"},
		{"no spaces", "10.1.2.3", "1.1.1.1,198.51.100.1", "198.51.100.1"},
		{"nil peer", "", "198.51.100.1", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := l.ClientAddr(net.ParseIP(tc.peer), []byte(tc.xff))
			if got != tc.want {
				t.Errorf("ClientAddr(%s, %q) = %q, want %q", tc.peer, tc.xff, got, tc.want)
			}
		})
	}
}

func TestParseTrustedProxiesInvalid(t *testing.T) {
	for _, entry := range []string{"10.0.0.0/33", "not-an-address", "10.0.0/8", ""} {
		if _, err := parseTrustedProxies([]string{entry}); err == nil {
			t.Errorf("parseTrustedProxies(%q) succeeded, want an error", entry)
		}
	}
}

func TestAddrSubject(t *testing.T) {
	cases := map[string]string{
		"198.51.100.1":        "a:198.51.100.1",
		"2001:db8:1:2:3::4":   "a:2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::": "a:2001:db8:1:2::/64",
		"":                    "a:",
	}
	for addr, want := range cases {
		if got := addrSubject(addr); got != want {
			t.Errorf("addrSubject(%q) = %q, want %q", addr, got, want)
		}
	}
}

func FuzzClientAddr(f *testing.F) {
	tp, err := parseTrustedProxies([]string{"10.0.0.0/8", "fd00::/8"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{10, 0, 0, 1}, []byte("1.1.1.1, 198.51.100.1"))
	f.Add([]byte{203, 0, 113, 9}, []byte("198.51.100.1"))
	f.Add([]byte{10, 0, 0, 1}, []byte(",,[::1]:80, unknown ,"))
	f.Fuzz(func(t *testing.T, peer, xff []byte) {
		got := tp.clientAddr(net.IP(peer), xff)
		if got == "" {
			if len(peer) == 4 || len(peer) == 16 {
				t.Errorf("ClientAddr(%v, %q) is empty for a valid peer", peer, xff)
			}
			return
		}
		if _, err := netip.ParseAddr(got); err != nil {
			t.Errorf("ClientAddr(%v, %q) = %q, not an address: %v", peer, xff, got, err)
		}
	})
}
