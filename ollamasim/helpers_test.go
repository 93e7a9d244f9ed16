package ollamasim_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ollama/ollama/api"
	"go.uber.org/goleak"

	"github.com/llmproxy/llmproxy/ollamasim"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// node is a simulated node on a loopback port with clients bound to it.
type node struct {
	*ollamasim.Running
	srv    *ollamasim.Server
	http   *http.Client
	client *api.Client
}

// defaultModels are the models of a node whose Config lists none.
var defaultModels = []ollamasim.ModelSpec{
	{Name: "llama3:8b"},
	{Name: "qwen2.5:7b"},
	{Name: "nomic-embed-text", Embedding: true},
}

// startNode starts a node serving cfg. The node and its clients close when
// the test ends; each node has its own transport so no idle connection
// outlives the test.
func startNode(t *testing.T, cfg ollamasim.Config) *node {
	t.Helper()
	if cfg.Models == nil {
		cfg.Models = defaultModels
	}
	srv := ollamasim.New(cfg)
	running, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatalf("start node: %v", err)
	}
	transport := &http.Transport{}
	t.Cleanup(func() {
		transport.CloseIdleConnections()
		if err := running.Close(); err != nil {
			t.Errorf("close node: %v", err)
		}
	})
	base, err := url.Parse(running.URL())
	if err != nil {
		t.Fatalf("parse node URL: %v", err)
	}
	httpClient := &http.Client{Transport: transport}
	return &node{
		Running: running,
		srv:     srv,
		http:    httpClient,
		client:  api.NewClient(base, httpClient),
	}
}

// do sends a request with a JSON body and returns the response. The body is
// closed when the test ends.
func (n *node) do(t *testing.T, ctx context.Context, method, path, body string) *http.Response {
	t.Helper()
	var reader io.Reader
	if body != "" {
		reader = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, n.URL()+path, reader)
	if err != nil {
		t.Fatalf("new request %s %s: %v", method, path, err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := n.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// post sends a JSON body and returns the status and the whole body.
func (n *node) post(t *testing.T, path, body string) (int, []byte) {
	t.Helper()
	resp := n.do(t, context.Background(), http.MethodPost, path, body)
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read answer of %s: %v", path, err)
	}
	return resp.StatusCode, data
}

// get sends a GET and returns the status and the whole body.
func (n *node) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	resp := n.do(t, context.Background(), http.MethodGet, path, "")
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read answer of %s: %v", path, err)
	}
	return resp.StatusCode, data
}

// waitFor waits until cond holds for the node's counters, failing the test
// after ten seconds.
func (n *node) waitFor(t *testing.T, what string, cond func(ollamasim.Stats) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.srv.WaitFor(ctx, cond); err != nil {
		t.Fatalf("wait for %s: %v (stats %+v)", what, err, n.srv.Stats())
	}
}

// stream is a streamed response being read line by line.
type stream struct {
	resp   *http.Response
	lines  *bufio.Scanner
	cancel context.CancelFunc
}

// openStream starts a streamed request that the test can read and cancel.
func (n *node) openStream(t *testing.T, path, body string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	resp := n.do(t, ctx, http.MethodPost, path, body)
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(resp.Body)
		t.Fatalf("POST %s: status %d, body %s", path, resp.StatusCode, data)
	}
	return &stream{resp: resp, lines: bufio.NewScanner(resp.Body), cancel: cancel}
}

// next returns the next line, failing the test at the end of the stream.
func (s *stream) next(t *testing.T) string {
	t.Helper()
	if !s.lines.Scan() {
		t.Fatalf("stream ended early: %v", s.lines.Err())
	}
	return s.lines.Text()
}

// rest reads the remaining lines and the error that ended the stream.
func (s *stream) rest() ([]string, error) {
	var lines []string
	for s.lines.Scan() {
		lines = append(lines, s.lines.Text())
	}
	return lines, s.lines.Err()
}

// generateResult is the part of a final /api line the tests check.
type generateResult struct {
	Response           string `json:"response"`
	Done               bool   `json:"done"`
	DoneReason         string `json:"done_reason"`
	Context            []int  `json:"context"`
	LoadDuration       int64  `json:"load_duration"`
	PromptEvalCount    int    `json:"prompt_eval_count"`
	PromptEvalDuration int64  `json:"prompt_eval_duration"`
	EvalCount          int    `json:"eval_count"`
	EvalDuration       int64  `json:"eval_duration"`
	Message            struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	} `json:"message"`
}

// generate posts a non-streamed request to path and decodes the response,
// failing the test unless it is 200.
func (n *node) generate(t *testing.T, path, body string) generateResult {
	t.Helper()
	status, data := n.post(t, path, body)
	if status != http.StatusOK {
		t.Fatalf("POST %s: status %d, body %s", path, status, data)
	}
	var r generateResult
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("decode answer of %s: %v; body %s", path, err, data)
	}
	return r
}

func ptr[T any](v T) *T {
	return &v
}

func jsonValid(s string) bool {
	return json.Valid([]byte(s))
}
