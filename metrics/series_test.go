package metrics

import (
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCachedSeriesCountOnTheirVectors(t *testing.T) {
	m := New()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				m.Request("chat", "llama3:latest", "gpu1", 200).Requests.Inc()
				m.TokensOf("alice", "llama3:latest").Completion.Add(2)
			}
		}()
	}
	wg.Wait()
	m.Request("chat", "llama3:latest", "gpu1", 503).Requests.Inc()
	m.TokenRate("gpu1", "llama3:latest").Set(42)
	m.TimeToFirstToken("llama3:latest").Observe(0.1)

	if got := testutil.ToFloat64(m.Requests.WithLabelValues("chat", "llama3:latest", "gpu1", "200")); got != 800 {
		t.Errorf("requests with code 200 = %v, want 800", got)
	}
	if got := testutil.ToFloat64(m.Requests.WithLabelValues("chat", "llama3:latest", "gpu1", "503")); got != 1 {
		t.Errorf("requests with code 503 = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.Tokens.WithLabelValues("alice", "llama3:latest", "completion")); got != 1600 {
		t.Errorf("completion tokens = %v, want 1600", got)
	}
	if got := testutil.ToFloat64(m.TokensPerSecond.WithLabelValues("gpu1", "llama3:latest")); got != 42 {
		t.Errorf("tokens per second = %v, want 42", got)
	}
	if got := testutil.CollectAndCount(m.TimeToFirstTok); got != 1 {
		t.Errorf("time-to-first-token series = %d, want 1", got)
	}
	if a, b := m.Request("chat", "x", "n", 200), m.Request("chat", "x", "n", 200); a != b {
		t.Error("the same labels gave two series")
	}
}

func BenchmarkRequestSeries(b *testing.B) {
	m := New()
	b.Run("cached", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				s := m.Request("chat", "llama3:latest", "gpu1", 200)
				s.Requests.Inc()
				s.Duration.Observe(0.01)
			}
		})
	})
	b.Run("vector", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				m.Requests.WithLabelValues("chat", "llama3:latest", "gpu1", "200").Inc()
				m.RequestDuration.WithLabelValues("chat", "llama3:latest").Observe(0.01)
			}
		})
	})
}

func TestForgetNodeRemovesItsGauges(t *testing.T) {
	m := New()
	for _, node := range []string{"gpu1", "gpu2"} {
		m.NodeUp.WithLabelValues(node).Set(1)
		m.NodeVRAMBytes.WithLabelValues(node).Set(1 << 30)
		m.TokenRate(node, "llama3:latest").Set(40)
		m.Request("chat", "llama3:latest", node, 200).Requests.Inc()
	}

	m.ForgetNode("gpu1")

	if got := testutil.CollectAndCount(m.NodeUp); got != 1 {
		t.Errorf("node_up series = %d, want 1", got)
	}
	if got := testutil.CollectAndCount(m.NodeVRAMBytes); got != 1 {
		t.Errorf("vram series = %d, want 1", got)
	}
	if got := testutil.CollectAndCount(m.TokensPerSecond); got != 1 {
		t.Errorf("tokens per second series = %d, want 1", got)
	}
	if got := testutil.CollectAndCount(m.Requests); got != 2 {
		t.Errorf("request counter series = %d, want both kept", got)
	}
	// A node that comes back under the same name is exported again.
	m.TokenRate("gpu1", "llama3:latest").Set(30)
	if got := testutil.ToFloat64(m.TokensPerSecond.WithLabelValues("gpu1", "llama3:latest")); got != 30 {
		t.Errorf("tokens per second of the returned node = %v, want 30", got)
	}
}
