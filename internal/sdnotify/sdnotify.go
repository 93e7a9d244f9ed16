// Package sdnotify notifies systemd of the proxy's life cycle over the
// sd_notify protocol: ready to serve, reloading its configuration, and
// stopping. Each call sends one datagram to the socket named by
// NOTIFY_SOCKET, and does nothing when that variable is unset, as it is
// outside a systemd unit of Type=notify.
package sdnotify

import (
	"fmt"
	"strings"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Ready notifies systemd that the proxy serves requests: after startup, and
// again at the end of every reload, whether the reload succeeded or not.
func Ready() error {
	return send(daemon.SdNotifyReady)
}

// Reloading notifies systemd that a configuration reload has started. The
// message carries MONOTONIC_USEC, the current CLOCK_MONOTONIC time, which
// systemd uses to match RELOADING=1 with the reload it started (see
// sd_notify(3) and Type=notify-reload in systemd.service(5)). Older systemd
// ignores the field. Call Ready when the reload ends.
func Reloading() error {
	return send(daemon.SdNotifyReloading + "\n" + daemon.SdNotifyMonotonicUsec())
}

// Stopping notifies systemd that the proxy has begun a graceful shutdown, so
// that it reports the unit as deactivating while requests drain.
func Stopping() error {
	return send(daemon.SdNotifyStopping)
}

// Status sends a one-line status that systemctl status shows next to the
// unit, such as the number of nodes up. Line breaks in text become spaces,
// because each line of a message is a separate field.
func Status(text string) error {
	return send("STATUS=" + strings.ReplaceAll(text, "\n", " "))
}

func send(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		field, _, _ := strings.Cut(state, "\n")
		return fmt.Errorf("sd_notify %s: %w", field, err)
	}
	return nil
}
