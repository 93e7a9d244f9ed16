//go:build !linux

package rawconn

import "net"

// Wrap returns c unchanged on this system.
func Wrap(c net.Conn) net.Conn { return c }
