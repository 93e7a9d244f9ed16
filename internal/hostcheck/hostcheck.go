// Package hostcheck contains Ollama's defence against DNS rebinding, which
// the proxy and the node simulator share. A web page can make a browser
// send requests to a loopback server under a hostname the attacker
// controls, so a server on a loopback address serves only requests whose
// Host header names this machine.
//
// The rule is that of Ollama's allowedHostsMiddleware, which a real
// Ollama server applies to every request.
package hostcheck

import (
	"net"
	"net/netip"
	"os"
	"strings"
)

// Applies reports whether requests on a listener at addr must pass
// Allowed. As in Ollama, only an address that parses as an IP address and
// port and is not loopback skips the check, so a wildcard address such as
// 0.0.0.0:11434 accepts any Host. A nil addr, for a server whose listener
// is unknown, also skips it.
func Applies(addr net.Addr) bool {
	switch a := addr.(type) {
	case nil:
		return false
	case *net.TCPAddr:
		// The same result as parsing a.String(), without its allocation.
		ip, ok := netip.AddrFromSlice(a.IP)
		return !ok || ip.Unmap().IsLoopback()
	}
	ap, err := netip.ParseAddrPort(addr.String())
	return err != nil || ap.Addr().IsLoopback()
}

// Allowed reports whether host, the value of a Host header with or without
// a port, names this machine. Allowed are an empty host, "localhost", the
// machine's hostname, names ending in .localhost, .local or .internal, and
// IP addresses that are loopback, private, unspecified or assigned to one
// of the machine's network interfaces. Names compare case-insensitively.
//
// An IPv6 address in brackets is allowed with or without a port, the two
// forms of RFC 9110.
func Allowed(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	host = strings.ToLower(host)

	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.IsLoopback() || ip.IsPrivate() || ip.IsUnspecified() {
			return true
		}
		// Rare and slower, so it comes last.
		return isInterfaceAddr(ip)
	}
	if host == "" || host == "localhost" {
		return true
	}
	for _, suffix := range []string{".localhost", ".local", ".internal"} {
		if strings.HasSuffix(host, suffix) {
			return true
		}
	}
	// Read on every call, so a renamed machine needs no restart.
	hostname, err := os.Hostname()
	return err == nil && host == strings.ToLower(hostname)
}

// isInterfaceAddr reports whether ip is assigned to one of the machine's
// network interfaces.
func isInterfaceAddr(ip netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	ip = ip.Unmap().WithZone("")
	for _, a := range addrs {
		prefix, err := netip.ParsePrefix(a.String())
		if err == nil && prefix.Addr().Unmap().WithZone("") == ip {
			return true
		}
	}
	return false
}
