package hostcheck

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
)

func TestAllowed(t *testing.T) {
	cases := []struct {
		host string
		want bool
	}{
		{"", true},
		{"localhost", true},
		{"LOCALHOST:11434", true},
		{"127.0.0.1:11434", true},
		{"127.0.0.2", true},
		{"[::1]:11434", true},
		{"[::1]", true},
		{"0.0.0.0:11434", true},
		{"[::]:11434", true},
		{"10.1.2.3:11434", true},
		{"192.168.0.10", true},
		{"172.16.5.4:80", true},
		{"[fd00::1]:11434", true},
		{"app.localhost", true},
		{"printer.local:631", true},
		{"host.docker.internal:11434", true},
		{"Api.Example.Internal", true},
		{"rebind.attacker.example:11434", false},
		{"attacker.example", false},
		{"localhost.attacker.example", false},
		{"attackerlocal", false},
		{"8.8.8.8:11434", false},
		{"[2001:db8::1]:11434", false},
	}
	for _, c := range cases {
		if got := Allowed(c.host); got != c.want {
			t.Errorf("Allowed(%q) = %v, want %v", c.host, got, c.want)
		}
	}
}

func TestAllowedHostname(t *testing.T) {
	hostname, err := os.Hostname()
	if err != nil || hostname == "" {
		t.Skipf("no hostname: %v", err)
	}
	if !Allowed(strings.ToUpper(hostname) + ":11434") {
		t.Errorf("Allowed(%q) = false, want the machine's hostname allowed", hostname)
	}
}

func TestAllowedInterfaceAddress(t *testing.T) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Skipf("no interface addresses: %v", err)
	}
	for _, a := range addrs {
		prefix, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := prefix.Addr()
		if ip.IsLoopback() || ip.IsPrivate() || ip.IsUnspecified() {
			continue
		}
		host := net.JoinHostPort(ip.String(), "11434")
		if !Allowed(host) {
			t.Errorf("Allowed(%q) = false, want an address of this machine allowed", host)
		}
		return
	}
	t.Skip("no interface address outside the loopback and private ranges")
}

func TestApplies(t *testing.T) {
	cases := []struct {
		name string
		addr net.Addr
		want bool
	}{
		{"nil", nil, false},
		{"loopback v4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 11434}, true},
		{"loopback v6", &net.TCPAddr{IP: net.IPv6loopback, Port: 11434}, true},
		{"private", &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 11434}, false},
		{"wildcard v4", &net.TCPAddr{IP: net.IPv4zero, Port: 11434}, false},
		{"wildcard v6", &net.TCPAddr{IP: net.IPv6unspecified, Port: 11434}, false},
		{"no IP", &net.TCPAddr{Port: 11434}, true},
		{"unix socket", &net.UnixAddr{Name: "/run/ollama.sock", Net: "unix"}, true},
		{"UDP loopback", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 11434}, true},
		{"UDP public", &net.UDPAddr{IP: net.IPv4(8, 8, 8, 8), Port: 11434}, false},
	}
	for _, c := range cases {
		if got := Applies(c.addr); got != c.want {
			t.Errorf("%s: Applies(%v) = %v, want %v", c.name, c.addr, got, c.want)
		}
	}
}
