package testenv

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
)

// LogBuffer collects log output written from several goroutines or by a
// child process.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// Bytes returns a copy of the output so far.
func (l *LogBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.buf.Bytes())
}

// String returns the output so far.
func (l *LogBuffer) String() string { return string(l.Bytes()) }

// Records returns each JSON line of l's output so far decoded into a T,
// and fails the test on a line that is not JSON.
func Records[T any](t testing.TB, l *LogBuffer) []T {
	t.Helper()
	var out []T
	for line := range bytes.Lines(l.Bytes()) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var rec T
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

// JSONProxy is Proxy with the proxy's log, from level up, kept as JSON
// lines in the returned LogBuffer.
func JSONProxy(t testing.TB, cfg *config.Config, level slog.Level) (*app.App, *LogBuffer) {
	t.Helper()
	logs := &LogBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: level}))
	return LoggedProxy(t, cfg, log), logs
}
