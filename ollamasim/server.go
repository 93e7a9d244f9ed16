package ollamasim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"
)

// maxRecordedBody bounds the copy of a request body LastRequest keeps. The
// handler still reads the whole body.
const maxRecordedBody = 16 << 20

// Server is a simulated Ollama node. It implements http.Handler; Start
// serves it on a TCP address. A Server is safe for concurrent use.
type Server struct {
	// Fixed at construction.
	cfg     Config
	mux     *http.ServeMux
	control *http.ServeMux
	models  *modelStore
	sched   *scheduler
	rec     *recorder
	faults  *faultState
	done    chan struct{} // closed by Close

	rngMu sync.Mutex // guards rng
	rng   *rand.Rand // seeds of non-deterministic completions, and completion IDs

	applyMu sync.Mutex // serialises fault changes and guards running
	running *Running

	// unmatched serves the requests that no route serves (handleUnmatched).
	unmatched http.Handler

	handlers  handlerTracker
	closeOnce sync.Once
}

// route describes a registered route for the middleware.
type route struct {
	name      string // the key of Stats.Requests
	inference bool   // subject to the Busy, ErrorRate and delay faults
	errors    errorShape
}

// New returns a node serving cfg. It panics when cfg.Validate reports an
// error, because a Config is normally a literal in a test or comes from
// flags that the caller validated.
func New(cfg Config) *Server {
	if err := cfg.Validate(); err != nil {
		panic(fmt.Sprintf("ollamasim: invalid config: %v", err))
	}
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:     cfg,
		mux:     http.NewServeMux(),
		control: http.NewServeMux(),
		models:  newModelStore(cfg),
		rec:     newRecorder(),
		faults:  newFaultState(),
		done:    make(chan struct{}),
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0xda3e39cb94b95bdb)),
	}
	s.sched = newScheduler(cfg, s.rec.changes.notify)
	s.faults.set(cfg.Faults, s.clearFaults)
	s.registerRoutes()
	s.registerControlRoutes()
	return s
}

func (s *Server) registerRoutes() {
	general := func(name string) route { return route{name: name} }
	inference := func(name string) route { return route{name: name, inference: true} }
	openAI := func(name string, inference bool) route {
		return route{name: name, inference: inference, errors: shapeOpenAI}
	}

	s.handle("GET /{$}", general("/"), s.handleRoot)
	s.handle("GET /api/version", general("/api/version"), s.handleVersion)
	s.handle("GET /api/tags", general("/api/tags"), s.handleTags)
	s.handle("GET /api/ps", general("/api/ps"), s.handlePS)
	s.handle("POST /api/show", general("/api/show"), s.handleShow)
	s.handle("POST /api/generate", inference("/api/generate"), s.handleGenerate)
	s.handle("POST /api/chat", inference("/api/chat"), s.handleChat)
	s.handle("POST /api/embed", inference("/api/embed"), s.handleEmbed)
	s.handle("POST /api/embeddings", inference("/api/embeddings"), s.handleEmbeddings)
	s.handle("POST /api/pull", general("/api/pull"), s.handlePull)
	s.handle("POST /api/push", general("/api/push"), s.handlePush)
	s.handle("POST /api/create", general("/api/create"), s.handleCreate)
	s.handle("POST /api/copy", general("/api/copy"), s.handleCopy)
	s.handle("DELETE /api/delete", general("/api/delete"), s.handleDelete)
	s.handle("HEAD /api/blobs/{digest}", general("/api/blobs/{digest}"), s.handleHeadBlob)
	s.handle("POST /api/blobs/{digest}", general("/api/blobs/{digest}"), s.handlePostBlob)

	s.handle("POST /v1/chat/completions", openAI("/v1/chat/completions", true), s.handleOpenAIChat)
	s.handle("POST /v1/completions", openAI("/v1/completions", true), s.handleOpenAICompletion)
	s.handle("POST /v1/embeddings", openAI("/v1/embeddings", true), s.handleOpenAIEmbeddings)
	s.handle("POST /v1/responses", openAI("/v1/responses", true), s.handleResponses)
	s.handle("POST /v1/messages",
		route{name: "/v1/messages", inference: true, errors: shapeAnthropic}, s.handleMessages)
	s.handle("GET /v1/models", openAI("/v1/models", false), s.handleOpenAIModels)
	// Like gin's :model parameter, {model} matches one path segment, so a
	// namespaced name such as user/custom:v1 gets the router's 404.
	s.handle("GET /v1/models/{model}", openAI("/v1/models/{model}", false), s.handleOpenAIModel)

	s.unmatched = s.middleware(general(RouteUnmatched), s.handleUnmatched)
	s.mux.Handle("/", s.unmatched)
}

func (s *Server) handle(pattern string, rt route, h http.HandlerFunc) {
	s.mux.Handle(pattern, s.middleware(rt, h))
}

// ServeHTTP serves the Ollama API and, under /_sim/, the control routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/_sim/") {
		s.control.ServeHTTP(w, r)
		return
	}
	if target, ok := cleanPathTarget(r); ok {
		http.Redirect(w, r, target, http.StatusMovedPermanently)
		return
	}
	if r.URL.RawPath != "" {
		// gin matches routes on the unescaped path (UseRawPath false), so
		// /api%2Ftags is /api/tags. Go's mux matches on the escaped path.
		r = withUnescapedPath(r)
	}
	if r.Method == http.MethodHead && !servesHead(r.URL.Path) {
		// Go's mux would serve HEAD with the GET route.
		s.unmatched.ServeHTTP(w, r)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// withUnescapedPath returns a shallow copy of r whose URL has no RawPath,
// so that its escaped form is that of the unescaped path.
func withUnescapedPath(r *http.Request) *http.Request {
	u := *r.URL
	u.RawPath = ""
	r2 := *r
	r2.URL = &u
	return &r2
}

// cleanPathTarget returns the Location to which Ollama redirects a request
// whose path is not clean, such as /api//tags or /api/./tags. Ollama
// serves its router through Go's http.ServeMux, which redirects such a
// path before Ollama's code runs, and v0.17.4 is built with Go 1.24,
// whose mux responds with 301 for every method but CONNECT. The mux of
// newer Go versions, which this one is, answers with 307 instead.
func cleanPathTarget(r *http.Request) (string, bool) {
	escaped := r.URL.EscapedPath()
	if r.Method == http.MethodConnect || !strings.HasPrefix(escaped, "/") {
		return "", false
	}
	clean := path.Clean(escaped)
	if strings.HasSuffix(escaped, "/") && clean != "/" {
		clean += "/"
	}
	if clean == escaped {
		return "", false
	}
	u := url.URL{Path: clean, RawQuery: r.URL.RawQuery}
	return u.String(), true
}

// middleware runs the phases every API request goes through before its
// handler: tracking, recording, Ollama's origin and host checks, faults.
func (s *Server) middleware(rt route, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Track the handler so Close can wait for it.
		if !s.handlers.enter() {
			writeError(w, rt.errors, http.StatusServiceUnavailable, errServerClosed.Error())
			return
		}
		defer s.handlers.exit()
		s.rec.enter()
		defer s.rec.exit()
		start := time.Now()

		// Count and copy the request before anything can reject it.
		body, err := s.record(rt.name, r)
		if err != nil {
			s.rec.noteCancelled()
			return
		}

		if !s.passAccess(w, r) || !s.passOutage(r) {
			return
		}
		if !s.passChecks(w, r, rt, body) || !s.passInferenceFaults(w, r, rt) {
			return
		}
		h(w, r)
		s.cfg.Logger.Debug("request served",
			"method", r.Method,
			"route", rt.name,
			"remote_addr", r.RemoteAddr,
			"duration", time.Since(start))
	})
}

// record reads the body, counts the request and keeps a copy for
// LastRequest. It returns the body, which the handler reads again.
func (s *Server) record(routeName string, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))

	kept := body
	if len(kept) > maxRecordedBody {
		kept = kept[:maxRecordedBody]
	}
	s.rec.received(routeName, bodyModel(body), RecordedRequest{
		Method:     r.Method,
		RequestURI: r.RequestURI,
		Host:       r.Host,
		RemoteAddr: r.RemoteAddr,
		Header:     r.Header.Clone(),
		Body:       bytes.Clone(kept),
	})
	return body, nil
}

// bodyModel returns the "model" (or legacy "name") field of a JSON body, and
// "" when there is none.
func bodyModel(body []byte) string {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return ""
	}
	var fields struct {
		Model string `json:"model"`
		Name  string `json:"name"`
	}
	if json.Unmarshal(trimmed, &fields) != nil {
		return ""
	}
	if fields.Model != "" {
		return fields.Model
	}
	return fields.Name
}

// passOutage applies the Hang and Refuse faults, which stop every request,
// and reports whether the request may continue. When it returns false,
// the request was cancelled or the connection dropped.
func (s *Server) passOutage(r *http.Request) bool {
	f, changed := s.faults.get()
	for f.Hang && !f.Refuse {
		select {
		case <-changed:
			f, changed = s.faults.get()
		case <-r.Context().Done():
			s.rec.noteCancelled()
			return false
		case <-s.done:
			return false
		}
	}
	if f.Refuse {
		// Close the connection without a response. Start closes the listener
		// too; this covers a bare handler and requests already accepted.
		panic(http.ErrAbortHandler)
	}
	return true
}

// passInferenceFaults applies the delay, Busy and error faults to an
// inference request and reports whether the handler should run. When it
// returns false, the response has been written or the request cancelled.
func (s *Server) passInferenceFaults(w http.ResponseWriter, r *http.Request, rt route) bool {
	if !rt.inference {
		return true
	}
	f, _ := s.faults.get()
	if err := s.pause(r.Context(), f.FirstByteDelay); err != nil {
		s.rec.noteCancelled()
		return false
	}
	if f.Busy {
		writeError(w, rt.errors, http.StatusServiceUnavailable, errServerBusy.Error())
		return false
	}
	if s.faults.drawFailure() {
		writeError(w, rt.errors, f.errorStatus(), f.errorMessage())
		return false
	}
	return true
}

// cutStream reports whether a stream that has sent frames frames must be cut
// by the CutAfterChunks fault.
func (s *Server) cutStream(frames int) bool {
	f, _ := s.faults.get()
	return f.CutAfterChunks > 0 && frames >= f.CutAfterChunks
}

// pause waits for d, or returns early with the context's error or
// errServerClosed.
func (s *Server) pause(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return errServerClosed
	}
}

// randomSeed returns the next value of the node's generator.
func (s *Server) randomSeed() uint64 {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.Uint64()
}

// Faults returns the active faults.
func (s *Server) Faults() Faults {
	f, _ := s.faults.get()
	return f
}

// SetFaults replaces the active faults; Faults{} heals the node. It returns
// an error when f is invalid, or when clearing Refuse cannot listen again on
// the node's address.
func (s *Server) SetFaults(f Faults) error {
	if err := f.Validate(); err != nil {
		return fmt.Errorf("set faults: %w", err)
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	return s.setFaultsLocked(f)
}

// setFaultsLocked changes the listener first and publishes the faults after,
// so once Faults reports Refuse set or cleared, the listener is closed or
// open.
func (s *Server) setFaultsLocked(f Faults) error {
	if s.running != nil {
		if err := s.running.setRefuse(f.Refuse); err != nil {
			return fmt.Errorf("set faults: %w", err)
		}
	}
	s.faults.set(f, s.clearFaults)
	s.rec.changes.notify()
	s.cfg.Logger.Info("faults set", "faults", f)
	return nil
}

// clearFaults runs when a ClearAfter elapses, unless the faults changed since.
func (s *Server) clearFaults(gen uint64) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if !s.faults.isCurrent(gen) {
		return
	}
	if err := s.setFaultsLocked(Faults{}); err != nil {
		s.cfg.Logger.Error("clear faults", "error", err)
	}
}

// Close ends every waiting request, unloads the models and waits for running
// handlers to return. Requests arriving later get 503. Close does not close
// listeners, so close them first (Running.Close does): a handler blocked
// writing to a client that stopped reading returns only when its connection
// closes.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.sched.close()
		s.faults.stop()
		s.handlers.closeAndWait()
	})
	return nil
}

func (s *Server) isClosed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// handlerTracker counts running handlers so Close can wait for them.
type handlerTracker struct {
	mu     sync.Mutex // guards closed and orders Add before Wait
	closed bool
	wg     sync.WaitGroup
}

func (t *handlerTracker) enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *handlerTracker) exit() {
	t.wg.Done()
}

func (t *handlerTracker) closeAndWait() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.wg.Wait()
}
