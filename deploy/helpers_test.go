// Package deploy_test checks the deployment files of this folder. The alert
// rules and the dashboard must name only metrics that llmproxy exports.
// Where promtool, systemd-analyze and nginx are installed, they check that
// the rules and queries parse and that the units and nginx example are valid.
package deploy_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// tool returns the path of an external checker, or skips the test with
// the package that provides it. It also looks in /usr/sbin, where Debian
// installs nginx, because that folder is not on the PATH of most users.
func tool(t *testing.T, name, apt string) string {
	t.Helper()
	for _, candidate := range []string{name, "/usr/sbin/" + name} {
		if path, err := exec.LookPath(candidate); err == nil {
			return path
		}
	}
	t.Skipf("%s not found, so this check does not run; install it with: apt-get install -y %s",
		name, apt)
	return ""
}

// run runs a checker and returns its combined output, failing the test
// when it exits with an error or runs for more than 30s.
func run(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}
