package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/bench/loadgen"
	"github.com/llmproxy/llmproxy/ollamasim"
)

func TestStampWriterStampsEvents(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		write       string
		stamped     bool
	}{
		{"event", "text/event-stream", "data: {\"id\":\"x\"}\n\n", true},
		{"empty object", "text/event-stream", "data: {}\n\n", true},
		{"done", "text/event-stream", "data: [DONE]\n\n", false},
		{"ndjson line", "application/x-ndjson", "{\"model\":\"m\"}\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			rec.Header().Set("Content-Type", tt.contentType)
			w := &stampWriter{ResponseWriter: rec}
			n, err := w.Write([]byte(tt.write))
			if err != nil {
				t.Fatalf("Write: %v", err)
			}
			if n != len(tt.write) {
				t.Errorf("Write returned %d, want %d", n, len(tt.write))
			}
			got := rec.Body.String()
			if !tt.stamped {
				if got != tt.write {
					t.Errorf("body = %q, want it unchanged", got)
				}
				return
			}
			var event struct {
				SentAt time.Time `json:"sent_at"`
			}
			data := strings.TrimSuffix(strings.TrimPrefix(got, "data: "), "\n\n")
			if err := json.Unmarshal([]byte(data), &event); err != nil {
				t.Fatalf("event %q is not JSON: %v", got, err)
			}
			if time.Since(event.SentAt) > time.Minute {
				t.Errorf("sent_at = %v, want about now", event.SentAt)
			}
		})
	}
}

func TestStampedNodeGivesSSELatency(t *testing.T) {
	node := ollamasim.New(ollamasim.Config{
		Models:       []ollamasim.ModelSpec{{Name: "llama3:8b"}},
		TokensPerSec: 400,
	})
	t.Cleanup(func() { node.Close() })
	srv := httptest.NewServer(stampEvents(node))
	t.Cleanup(srv.Close)

	res := loadgen.RunStreams(context.Background(), loadgen.StreamLoad{
		URLs:   []string{srv.URL},
		Path:   "/v1/chat/completions",
		Body:   []byte(`{"model":"llama3:8b","stream":true,"messages":[{"role":"user","content":"hi"}]}`),
		Format: loadgen.SSE, Streams: 2, Ramp: 20 * time.Millisecond, Duration: 300 * time.Millisecond,
	})
	if res.Errors != 0 {
		t.Fatalf("errors = %d, first: %s", res.Errors, res.FirstError)
	}
	if res.ChunkLatency.Count == 0 {
		t.Fatal("no chunk latency sample from sent_at")
	}
	if res.ChunkLatency.P50 < 0 || res.ChunkLatency.P50 > 100*time.Millisecond {
		t.Errorf("chunk latency p50 = %v, want between 0 and 100ms on loopback", res.ChunkLatency.P50)
	}
}

// flushRecorder checks that stampWriter passes flushes on.
type flushRecorder struct {
	*httptest.ResponseRecorder
	flushes int
}

func (f *flushRecorder) Flush() { f.flushes++ }

func TestStampWriterFlushes(t *testing.T) {
	rec := &flushRecorder{ResponseRecorder: httptest.NewRecorder()}
	w := &stampWriter{ResponseWriter: rec}
	if err := http.NewResponseController(w).Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if rec.flushes != 1 {
		t.Errorf("flushes = %d, want 1", rec.flushes)
	}
}
