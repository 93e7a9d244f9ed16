package proxy_test

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testenv"
)

// newerNode starts a node that serves, besides what the proxy polls, a
// few routes that the proxy has no route of its own for, as a newer
// Ollama would. It lists model and names itself in X-Served-By. Its
// NDJSON stream on /api/experimental/progress sends one line, then waits
// for release before the last one.
func newerNode(t *testing.T, name, model string, release <-chan struct{}) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/version", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"version":"0.30.0"}`)
	})
	mux.HandleFunc("GET /api/tags", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"models":[{"name":"`+model+`:latest","model":"`+model+
			`:latest","size":1,"digest":"d","details":{"format":"gguf"}}]}`)
	})
	mux.HandleFunc("GET /api/ps", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"models":[]}`)
	})

	// Routes of newer Ollama versions.
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = io.WriteString(w, `{"cloud":{"disabled":false,"source":"default"}}`)
	})
	mux.HandleFunc("POST /api/me", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"error":"unauthorized","signin_url":"https://ollama.com/connect"}`)
	})
	mux.HandleFunc("POST /v1/images/generations", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"created":1,"data":[{"b64_json":"aW1n"}]}`)
	})
	mux.HandleFunc("POST /v1/audio/transcriptions", func(w http.ResponseWriter, r *http.Request) {
		if r.FormValue("model") == "" {
			http.Error(w, `{"error":"model is required"}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"text":"hello"}`)
	})
	mux.HandleFunc("POST /api/experimental/progress", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = io.WriteString(w, `{"status":"started"}`+"\n")
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, `{"status":"success"}`+"\n")
	})

	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// Ollama's router sends this for a path it does not serve.
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, "404 page not found")
	})

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Served-By", name)
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// fallbackProxy starts two newer nodes, n0 with model "img" and n1 with
// "whisper", behind a proxy with the keys "all" and "imgonly", which may
// use only "img".
func fallbackProxy(t *testing.T, release <-chan struct{}) (*app.App, *testenv.LogBuffer) {
	t.Helper()
	cfg := testenv.Config(t)
	for i, model := range []string{"img", "whisper"} {
		name := "n" + string(rune('0'+i))
		nc := config.DefaultNode(newerNode(t, name, model, release))
		nc.Name = name
		cfg.Nodes = append(cfg.Nodes, nc)
	}
	imgOnly := limitKey("imgonly")
	imgOnly.AllowedModels = []string{"img"}
	cfg.Auth.Keys = []config.Key{limitKey("all"), imgOnly}
	p, logs := testenv.JSONProxy(t, cfg, slog.LevelInfo)
	testenv.WaitFor(t, 5*time.Second, "both model lists", func() bool {
		return p.Balancer().HasModel("img:latest") && p.Balancer().HasModel("whisper:latest")
	})
	return p, logs
}

// transcription returns a multipart body as OpenAI's SDKs send to
// /v1/audio/transcriptions, with the file before the model field.
func transcription(t *testing.T, model string) (body []byte, contentType string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile("file", "hello.wav")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fw.Write(bytes.Repeat([]byte{0x52}, 4096))
	_ = mw.WriteField("model", model)
	_ = mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

// do sends a request with the key named key and returns the response with
// its whole body.
func do(t *testing.T, method, url, key, contentType string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Authorization", "Bearer "+secretOf(key))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp, readBody(t, resp)
}

func TestFallbackReachesNewerRoutes(t *testing.T) {
	release := make(chan struct{})
	p, logs := fallbackProxy(t, release)
	// Cleanups run last in first out, so this one frees a held stream
	// before the nodes close, also when the test stops early.
	var freeOnce sync.Once
	free := func() { freeOnce.Do(func() { close(release) }) }
	t.Cleanup(free)
	base := p.URL()

	t.Run("status relayed", func(t *testing.T) {
		resp, body := do(t, "GET", base+"/api/status", "all", "", nil)
		if resp.StatusCode != http.StatusOK || string(body) != `{"cloud":{"disabled":false,"source":"default"}}` {
			t.Errorf("status %d, body %s", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json; charset=utf-8" {
			t.Errorf("Content-Type %q, want the node's", ct)
		}
	})
	t.Run("node error relayed as is", func(t *testing.T) {
		resp, body := do(t, "POST", base+"/api/me", "all", "", nil)
		want := `{"error":"unauthorized","signin_url":"https://ollama.com/connect"}`
		if resp.StatusCode != http.StatusUnauthorized || string(body) != want {
			t.Errorf("status %d, body %s; want 401 %s", resp.StatusCode, body, want)
		}
	})
	t.Run("path no node serves", func(t *testing.T) {
		resp, body := do(t, "GET", base+"/api/nothing/here", "all", "", nil)
		if resp.StatusCode != http.StatusNotFound || string(body) != "404 page not found" {
			t.Errorf("status %d, body %q; want the node's 404", resp.StatusCode, body)
		}
	})
	t.Run("json model picks its node", func(t *testing.T) {
		for range 4 {
			resp, body := do(t, "POST", base+"/v1/images/generations", "all", "application/json",
				[]byte(`{"model":"img","prompt":"a cat"}`))
			if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Served-By") != "n0" {
				t.Fatalf("status %d from %q, body %s; want 200 from n0", resp.StatusCode,
					resp.Header.Get("X-Served-By"), body)
			}
		}
	})
	t.Run("multipart model picks its node", func(t *testing.T) {
		body, ct := transcription(t, "whisper")
		for range 4 {
			resp, got := do(t, "POST", base+"/v1/audio/transcriptions", "all", ct, body)
			if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Served-By") != "n1" {
				t.Fatalf("status %d from %q, body %s; want 200 from n1", resp.StatusCode,
					resp.Header.Get("X-Served-By"), got)
			}
		}
	})
	t.Run("model no node lists", func(t *testing.T) {
		resp, body := do(t, "POST", base+"/v1/images/generations", "all", "application/json",
			[]byte(`{"model":"nope","prompt":"a cat"}`))
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("status %d, body %s; want 404", resp.StatusCode, body)
		}
		if msg := anyErrorMessage(t, body); !strings.Contains(msg, `'nope' not found`) {
			t.Errorf("message %q, want the model named", msg)
		}
	})
	t.Run("allowed_models applies", func(t *testing.T) {
		body, ct := transcription(t, "whisper")
		resp, got := do(t, "POST", base+"/v1/audio/transcriptions", "imgonly", ct, body)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("status %d, body %s; want 403", resp.StatusCode, got)
		}
	})
	t.Run("duplicate model key", func(t *testing.T) {
		// The node would read the last model, and the key is checked
		// against the first.
		resp, body := do(t, "POST", base+"/v1/images/generations", "imgonly", "application/json",
			[]byte(`{"model":"img","model":"whisper","prompt":"a cat"}`))
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status %d, body %s; want 400", resp.StatusCode, body)
		}
		if msg := anyErrorMessage(t, body); !strings.Contains(msg, `duplicate key "model"`) {
			t.Errorf("message %q, want the duplicate key named", msg)
		}
	})
	t.Run("stream relayed as it arrives", func(t *testing.T) {
		req, _ := http.NewRequest("POST", base+"/api/experimental/progress", strings.NewReader(`{}`))
		req.Header.Set("Authorization", "Bearer "+secretOf("all"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		lines := bufio.NewReader(resp.Body)
		// The node holds the last line until release, so the first can
		// only arrive now if the proxy relays the stream as it comes.
		first, err := lines.ReadString('\n')
		if err != nil || first != `{"status":"started"}`+"\n" {
			t.Fatalf("first line %q, %v", first, err)
		}
		free()
		rest, _ := io.ReadAll(lines)
		if string(rest) != `{"status":"success"}`+"\n" {
			t.Errorf("rest of the stream %q", rest)
		}
	})

	t.Run("quotas count requests with a model", func(t *testing.T) {
		waitSettled(t, p, "all")
		// Four image generations and four transcriptions ran a model, and the 404
		// of "nope" counts as a client error. The other routes named none.
		if got := keyUsage(t, p, "all").MonthlyRequests; got != 9 {
			t.Errorf("monthly requests %d, want 9", got)
		}
	})
	t.Run("metrics and log", func(t *testing.T) {
		requests := testutil.ToFloat64(p.Metrics().Requests.WithLabelValues("/v1/*", "img:latest", "n0", "200"))
		if requests != 4 {
			t.Errorf("llmproxy_requests_total{route=/v1/*,model=img:latest} = %v, want 4", requests)
		}
		type line struct {
			Msg, Route, Node string
			Status           int
		}
		found := false
		for _, l := range testenv.Records[line](t, logs) {
			if l.Msg == "request" && l.Route == "/api/status" && l.Status == 200 && l.Node != "" {
				found = true
			}
		}
		if !found {
			t.Errorf("no access log line for /api/status with its node in:\n%s", logs)
		}
	})
}
