package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/internal/ollamacheck"
	"github.com/llmproxy/llmproxy/internal/wire"
)

// refreshTimeout is the maximum duration of an inventory refresh made for
// a request.
const refreshTimeout = 5 * time.Second

// modelOpTimeout bounds a whole pull or create that goes through a
// fan-out, and the wait for the response headers of one sent with
// "stream": false, for which Ollama sends nothing until it ends.
const modelOpTimeout = 6 * time.Hour

// errNodeDown ends a node's part in a fan-out when health checks mark the
// node down while the operation is in flight.
var errNodeDown = errors.New("node marked down by health checks during the operation")

// modelOpTimeouts returns the limits of a node's part in a fan-out on rt.
// A delete, copy or unload is quick on Ollama, so it gets the upstream
// timeouts of any request, and upstream.total when set. A pull or create
// gets modelOpTimeout in all and between two progress lines. Ollama sends
// no progress while it checks a pulled model's digests or converts or
// quantizes a created model. Not streamed, it has modelOpTimeout for its
// response headers. A node that stops responding meanwhile fails its
// health checks, and fanoutOne ends its part once they mark it down.
func (s *Server) modelOpTimeouts(rt route, stream bool) (timeouts, time.Duration) {
	cfg := s.config()
	t := timeouts{connect: cfg.Upstream.Connect, firstByte: cfg.Upstream.FirstByte,
		idle: cfg.Upstream.Idle}
	if rt.name != "/api/pull" && rt.name != "/api/create" {
		return t, cfg.Upstream.Total
	}
	t.idle = max(t.idle, modelOpTimeout)
	if !stream {
		t.firstByte = max(t.firstByte, modelOpTimeout)
	}
	return t, modelOpTimeout
}

// serveFanout serves the model management routes that change every node
// concerned: pull goes to every manageable node (up and not draining,
// restricted and ejected nodes included, see balancer.Node.Manageable),
// delete and copy to the manageable nodes that list the model. A pull
// succeeds when at least one node succeeded, because the model is then
// listed and served, as it would be by one Ollama server. A delete or copy
// succeeds only when every node succeeded, and is rejected before any node
// is changed while a node that lists the model is down or draining or a
// node's model list has never been fetched (see checkHoldersUsable). A
// copy that succeeded then removes the destination from the nodes that
// list it without the source (see replacement).
func (s *Server) serveFanout(ctx *fasthttp.RequestCtx, rt route, rs *reqState) {
	var p fastjson.Parser
	v, err := parseObject(&p, ctx.PostBody())
	if err != nil {
		writeBodyError(ctx, rt, ctx.PostBody(), err)
		return
	}
	model, err := fanoutModel(v, rt, ctx.PostBody())
	if err != nil {
		writeBodyError(ctx, rt, ctx.PostBody(), err)
		return
	}
	if model == "" {
		writeModelNotFound(ctx, rt, ctx.PostBody(), "")
		return
	}
	rs.model = wire.ModelKey(model)
	rs.changedModel = rs.model
	if rt.name == "/api/copy" {
		// A copy writes its destination, which the key must be allowed to
		// use as well as the source that admit checks.
		destination, _ := stringField(v, "destination")
		rs.changedModel = wire.ModelKey(destination)
		if !allowsModel(ctx, rt, rs, destination) {
			return
		}
	}
	if !s.admit(ctx, rt, rs, fields{model: rs.model, rawModel: model}) {
		return
	}
	if rt.name != "/api/pull" {
		s.refreshBeforeWrite()
	}
	if !s.checkHoldersUsable(ctx, rt, v, model) {
		return
	}
	targets := s.fanoutTargets(rt, rs.model)
	if rt.name == "/api/pull" {
		s.logSkippedNodes(rs, targets)
	}
	if len(targets) == 0 {
		if rt.name == "/api/pull" {
			writeError(ctx, rt, fasthttp.StatusServiceUnavailable, "no healthy node to pull onto")
			return
		}
		if s.bal.HasModel(rs.model) || !s.bal.ModelsKnown() {
			writeNoHealthyNode(ctx, rt, model)
			return
		}
		writeModelNotFound(ctx, rt, ctx.PostBody(), model)
		return
	}
	var repl *replacement
	if rt.name == "/api/copy" {
		destination, _ := stringField(v, "destination")
		repl = s.newReplacement(ctx, rs, "copied "+quote(model)+" to "+quote(destination),
			destination, targets)
	}
	stream := rt.streams && streamFlag(v, rt)
	if stream {
		s.streamFanout(ctx, rt, rs, targets, repl)
		return
	}
	s.waitFanout(ctx, rt, rs, targets, repl)
}

// fanoutModel returns the model that a fan-out acts on: the source of a
// copy, or else the model the body names, "" when it names none. A copy
// must also name a valid source and destination, and the error for either
// is Ollama's (see ollamacheck.Precheck).
func fanoutModel(v *fastjson.Value, rt route, body []byte) (string, error) {
	if rt.name != "/api/copy" {
		return modelField(v, rt)
	}
	source, err := stringField(v, "source")
	if err != nil {
		return "", err
	}
	if _, err := stringField(v, "destination"); err != nil {
		return "", err
	}
	if e, failed := ollamacheck.Precheck(rt.name, body); failed {
		return "", &bodyTypeError{e.Message}
	}
	return source, nil
}

// fanoutTargets returns the nodes that a pull, delete or copy of model
// reaches. A node that passive checks or its breaker keep out of
// generation traffic is among them, because it still passes its probes.
// Without it, a model that only such a node lists could not be deleted or
// copied until the node is back in. Its errors are reported as any other
// node's, and a model operation counts nothing towards its health.
func (s *Server) fanoutTargets(rt route, model string) []*balancer.Node {
	var out []*balancer.Node
	for _, n := range s.bal.Manageable() {
		if rt.name == "/api/pull" || n.HasModel(model) {
			out = append(out, n)
		}
	}
	return out
}

// logSkippedNodes logs at warn level, and counts, each node that a pull
// does not reach because it was down or draining when the targets were
// chosen. Such a node lacks the model until the model is pulled again.
func (s *Server) logSkippedNodes(rs *reqState, targets []*balancer.Node) {
	for _, n := range s.bal.Nodes() {
		if slices.Contains(targets, n) {
			continue
		}
		reason := nodeState(n)
		breaker := ""
		if s.breakerState != nil {
			breaker = s.breakerState(n)
		}
		s.log.Warn("pull skipped a node that is down or draining, so it lacks the model until pulled again",
			"request_id", rs.id, "model", rs.model, "node", n.Name, "reason", reason,
			"breaker", breaker, "last_error", n.LastError())
		if s.m != nil {
			s.m.PullSkipped.WithLabelValues(n.Name, reason).Inc()
		}
	}
}

// fanoutResult is one node's outcome of a fanned-out request.
type fanoutResult struct {
	node   *balancer.Node
	status int
	body   []byte
	// contentType is the node's Content-Type of body, "" when it sent
	// none. Ollama's handlers differ: an error before the operation starts
	// is gin's JSON, with a charset, but the final line of a pull, push or
	// create with "stream": false, and an error met on the way, has
	// application/json (waitForStream in server/routes.go).
	contentType string
	// errMsg is the node's error for the client, "" for success.
	errMsg string
	// detail is the node's error in full, for the log, when errMsg leaves
	// part of it out (see clientText).
	detail string
	// cutOff is set when the proxy ended the node's part before the node's
	// final response: the client left, the node went down or the operation
	// ran out of time. The operation may have completed on the node anyway.
	cutOff bool
}

// waitFanout sends the request to every target and waits for all of them.
// It responds with the first successful node's response when the fan-out
// succeeded (see fanoutSucceeded) and repl, when set, removed the older
// model everywhere. Otherwise it responds with an error that names the
// nodes that failed.
func (s *Server) waitFanout(ctx *fasthttp.RequestCtx, rt route, rs *reqState,
	targets []*balancer.Node, repl *replacement) {
	wctx, watch := watchClient(context.Background(), ctx.Conn())
	defer watch.finish()
	defer s.noteClientLeft(ctx, rs, watch)
	req := s.upstreamRequest(ctx, rs)
	defer fasthttp.ReleaseRequest(req)
	t, total := s.modelOpTimeouts(rt, false)
	results := make([]fanoutResult, len(targets))
	var wg sync.WaitGroup
	for i, n := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = s.fanoutOne(wctx, n, req, t, total, nil)
		}()
	}
	wg.Wait()
	s.afterFanout(rt, rs, targets, results)
	// The purge runs after the removal of older models, and before the
	// client gets the response.
	defer s.purgeChangedModel(rs, results)
	if !fanoutSucceeded(rt, results) {
		repl.release()
		writeFanoutError(ctx, rt, rs, results)
		return
	}
	s.logFailedNodes(rs, results)
	if status, msg := s.replaceOlder(rs, repl); msg != "" {
		writeError(ctx, rt, status, msg)
		return
	}
	for _, r := range results {
		if r.errMsg == "" {
			ctx.SetStatusCode(r.status)
			if len(r.body) > 0 {
				setNodeContentType(ctx, r.contentType)
				ctx.SetBody(r.body)
			}
			return
		}
	}
}

// noteClientLeft records StatusClientClosed for a request whose client
// left before its response was sent, whatever response the handler set,
// because the client got none of it.
func (s *Server) noteClientLeft(ctx *fasthttp.RequestCtx, rs *reqState, watch *clientWatch) {
	if !clientLeft(watch, nil) {
		return
	}
	rs.status = StatusClientClosed
	rs.err = errClientGone.Error()
	ctx.SetConnectionClose()
}

// afterFanout updates the inventories of the targets once every node has
// responded. A node that deleted the model stops listing it at once, so
// that no request goes there even when the refresh that follows fails.
func (s *Server) afterFanout(rt route, rs *reqState, targets []*balancer.Node,
	results []fanoutResult) {
	if rt.name == "/api/delete" {
		for _, r := range results {
			if r.errMsg == "" {
				r.node.MarkRemoved(rs.model)
			}
		}
	}
	s.refreshNodes(targets)
}

// logText returns the node's error for the log: detail when set, and
// errMsg otherwise.
func (r fanoutResult) logText() string {
	if r.detail != "" {
		return r.detail
	}
	return r.errMsg
}

// withDetails returns a copy of results in which each errMsg is the
// node's error in full, to build the log's version of a message.
func withDetails(results []fanoutResult) []fanoutResult {
	out := slices.Clone(results)
	for i := range out {
		out[i].errMsg = out[i].logText()
	}
	return out
}

// fanoutSucceeded reports whether a fan-out succeeded: a pull when at
// least one node succeeded, and any other route when every node did.
func fanoutSucceeded(rt route, results []fanoutResult) bool {
	failed := 0
	for _, r := range results {
		if r.errMsg != "" {
			failed++
		}
	}
	if rt.name == "/api/pull" {
		return failed < len(results)
	}
	return failed == 0
}

// logFailedNodes logs at warn level each node that failed in a fan-out
// that succeeded as a whole.
func (s *Server) logFailedNodes(rs *reqState, results []fanoutResult) {
	for _, r := range results {
		if r.errMsg != "" {
			s.log.Warn("model operation failed on a node but succeeded on others",
				"request_id", rs.id, "route", rs.route.name, "model", rs.model,
				"node", r.node.Name, "error", r.logText())
		}
	}
}

// writeFanoutError responds with the status of the first node that
// failed, or 500 when that node sent no error status, and the message of
// fanoutFailure. A node that went down during the operation counts as a
// 503, sent with Retry-After. A create's node error in Ollama's shape goes
// out unchanged, as failAttempt sends it after forward.
func writeFanoutError(ctx *fasthttp.RequestCtx, rt route, rs *reqState, results []fanoutResult) {
	if r := results[0]; rt.name == "/api/create" && r.status >= 400 && len(r.body) > 0 {
		if relay, _ := nodeErrorMessage(rt, r.status, r.body); relay {
			ctx.SetStatusCode(r.status)
			setNodeContentType(ctx, r.contentType)
			ctx.SetBody(r.body)
			return
		}
	}
	status, contentType := 0, ""
	for _, r := range results {
		if r.errMsg != "" {
			status, contentType = r.status, r.contentType
			break
		}
	}
	if status < 400 {
		status = fasthttp.StatusInternalServerError
	}
	if status == fasthttp.StatusServiceUnavailable {
		ctx.Response.Header.Set("Retry-After", holderRetryAfter)
	}
	writeError(ctx, rt, status, fanoutFailure(rt, rs, results))
	if strings.HasPrefix(contentType, "application/json") {
		// The node's own variant, since the body has Ollama's shape.
		ctx.SetContentType(contentType)
	}
	rs.err = fanoutFailure(rt, rs, withDetails(results))
}

// setNodeContentType sets the Content-Type that a node sent with a body
// that the proxy passes on, or, when it sent none, gin's for JSON.
func setNodeContentType(ctx *fasthttp.RequestCtx, contentType string) {
	if contentType == "" {
		contentType = jsonUTF8
	}
	ctx.SetContentType(contentType)
}

// fanoutFailure returns the error message of a fan-out that failed. It
// names every node that failed with its error and, because the model was
// then changed on those nodes only, every node that succeeded. A create
// has one target, whose message it returns unchanged, as a create that
// goes through forward would.
func fanoutFailure(rt route, rs *reqState, results []fanoutResult) string {
	if rt.name == "/api/create" {
		return results[0].errMsg
	}
	var failed, succeeded []string
	for _, r := range results {
		if r.errMsg == "" {
			succeeded = append(succeeded, r.node.Name)
			continue
		}
		failed = append(failed, "node "+r.node.Name+": "+r.errMsg)
	}
	msg := strings.TrimPrefix(rt.name, "/api/") + " of " + quote(rs.model) + " failed on " +
		strings.Join(failed, "; ")
	if len(succeeded) > 0 {
		msg += ". It succeeded on " + strings.Join(succeeded, ", ")
	}
	return msg
}

// fanoutOne sends req to one node within t and total, when total is
// positive. With fs set, each progress line of a streamed response is
// passed on to fs as it arrives, except the node's own final success line,
// because the proxy sends one for all nodes at the end. The node's part
// ends with errNodeDown once health checks mark the node down.
func (s *Server) fanoutOne(ctx context.Context, n *balancer.Node, req *fasthttp.Request,
	t timeouts, total time.Duration, fs *fanoutStream) fanoutResult {
	r := fanoutResult{node: n}
	local := fasthttp.AcquireRequest()
	defer fasthttp.ReleaseRequest(local)
	req.CopyTo(local)
	nctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if total > 0 {
		var stop context.CancelFunc
		nctx, stop = context.WithTimeoutCause(nctx, total,
			fmt.Errorf("model operation timed out after %s", total))
		defer stop()
	}
	go func() {
		select {
		case <-n.Down():
			cancel(errNodeDown)
		case <-nctx.Done():
		}
	}()
	s.exchangeModelOp(nctx, n, local, t, fs, &r)
	if r.errMsg != "" && context.Cause(nctx) == nil && !n.Up() {
		// The upstream ended the wait for the node's response when the
		// node went down (errNodeMarkedDown), before the goroutine above
		// cancelled nctx.
		cancel(errNodeDown)
	}
	if r.errMsg != "" && context.Cause(nctx) != nil {
		// A read that the context ended fails with errCancelled, which
		// does not say why.
		r.errMsg = context.Cause(nctx).Error()
		r.detail = ""
		r.cutOff = true
		if errors.Is(context.Cause(nctx), errNodeDown) {
			// As for a delete or copy that finds the node down before
			// it starts (checkHoldersUsable).
			r.status = fasthttp.StatusServiceUnavailable
		}
	}
	return r
}

// exchangeModelOp sends req to n and sets r's status, its body and
// Content-Type when the body is not relayed to fs, and the error of the
// node's part, "" for success. detail is the error in full when errMsg,
// the client's text, leaves part of it out. Only a streamed response with
// a success status is relayed, because Ollama sends an error that comes
// before its first progress line as the response status and a JSON body.
func (s *Server) exchangeModelOp(ctx context.Context, n *balancer.Node, req *fasthttp.Request,
	t timeouts, fs *fanoutStream, r *fanoutResult) {
	ex, err := s.upstreamFor(n).send(ctx, req, t)
	if err != nil {
		r.errMsg = clientText(err)
		if full := err.Error(); full != r.errMsg {
			r.detail = full
		}
		return
	}
	r.status = ex.resp.StatusCode()
	if fs == nil || r.status >= 400 || !isStreamed(&ex.resp) {
		r.body, err = ex.readAll(16 << 20)
		ex.resp.SetNoDefaultContentType(true)
		r.contentType = string(ex.resp.ContentType())
		ex.closeWith(err == nil)
		if err != nil {
			r.errMsg = err.Error()
		} else if r.status >= 400 || fastjson.Exists(r.body, "error") {
			r.errMsg = errorText(r.body)
		}
		if r.errMsg == "" && r.status >= 400 {
			// An error status with an empty body.
			r.errMsg = "node returned status " + itoa(r.status)
		}
		return
	}
	fs.markStreaming()
	r.errMsg = relayProgress(ctx, n, ex, fs.lines)
	ex.closeWith(r.errMsg == "")
}

// relayProgress passes a node's NDJSON progress lines on and returns the
// error the node reported, if any.
func relayProgress(ctx context.Context, n *balancer.Node, ex *exchange, lines chan<- progressLine) string {
	br := bufio.NewReaderSize(readerOnly{ex}, 16<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(line)) > 0 {
			if fastjson.Exists(line, "error") {
				return errorText(line)
			}
			if fastjson.GetString(line, "status") != "success" {
				select {
				case lines <- progressLine{node: n, line: line}:
				case <-ctx.Done():
					return context.Cause(ctx).Error()
				}
			}
		}
		if err == io.EOF {
			return ""
		}
		if err != nil {
			return err.Error()
		}
	}
}

func errorText(body []byte) string {
	if msg := fastjson.GetString(body, "error"); msg != "" {
		return msg
	}
	return strings.TrimSpace(string(body))
}

// streamFanout streams the progress of every target to the client as it
// comes and ends with one success line, or an error line naming the nodes
// that failed. A node that fails is reported to the merge, which then
// stops waiting for it. When the fan-out succeeded, repl, when set, runs
// before the last line, which then names any node that still has the
// older model.
//
// The response status is sent once a node starts a stream with a success
// status. A fan-out that fails on every node before that gets its error
// as the response status and body instead, as Ollama sends the errors
// that come before its first progress line (see failFanout).
func (s *Server) streamFanout(ctx *fasthttp.RequestCtx, rt route, rs *reqState,
	targets []*balancer.Node, repl *replacement) {
	fctx, cancel := context.WithCancel(context.Background())
	wctx, watch := watchClient(fctx, ctx.Conn())
	s.inflight.track(watch)
	req := s.upstreamRequest(ctx, rs)
	// Until a node streams, each target sends at most its failure to
	// lines, so the extra capacity keeps every sender from blocking while
	// nothing reads lines yet.
	fs := &fanoutStream{lines: make(chan progressLine, 64+len(targets)), streaming: make(chan struct{}),
		cancel: cancel, watch: watch, s: s, rs: rs, merge: newProgressMerge(targets)}
	t, total := s.modelOpTimeouts(rt, true)
	results := make([]fanoutResult, len(targets))
	fs.wg.Add(len(targets))
	for i, n := range targets {
		go func() {
			defer fs.wg.Done()
			results[i] = s.fanoutOne(wctx, n, req, t, total, fs)
			if results[i].errMsg == "" {
				return
			}
			select {
			case fs.lines <- progressLine{node: n, failed: true}:
			case <-wctx.Done():
			}
		}()
	}
	finished := make(chan struct{})
	go func() {
		fs.wg.Wait()
		close(finished)
	}()
	select {
	case <-fs.streaming:
	case <-finished:
	}
	if !fs.streamed() && !fanoutSucceeded(rt, results) {
		// Every node finished, and the results are complete.
		fasthttp.ReleaseRequest(req)
		s.failFanout(ctx, rt, rs, targets, results, repl, watch)
		cancel()
		return
	}
	go func() {
		<-finished
		fasthttp.ReleaseRequest(req)
		s.afterFanout(rt, rs, targets, results)
		last := s.finalFanoutLine(rt, rs, results, repl)
		s.purgeChangedModel(rs, results)
		fs.lines <- progressLine{line: last}
		close(fs.lines)
	}()
	ctx.SetContentType("application/x-ndjson")
	ctx.Response.Header.Set("X-Accel-Buffering", "no")
	ctx.Response.ImmediateHeaderFlush = true
	rs.deferred = true
	rs.status = 200
	rs.ctx = nil
	ctx.SetBodyStream(fs, -1)
}

// failFanout responds to a streamed fan-out that failed on every node
// before any node started a stream. It sends writeFanoutError, as
// waitFanout does for a failed fan-out, or 503 with Retry-After when a
// shutdown ended the node requests. It finishes watch.
func (s *Server) failFanout(ctx *fasthttp.RequestCtx, rt route, rs *reqState,
	targets []*balancer.Node, results []fanoutResult, repl *replacement, watch *clientWatch) {
	left := clientLeft(watch, nil)
	stop := proxyStop(watch)
	watch.finish()
	s.afterFanout(rt, rs, targets, results)
	s.purgeChangedModel(rs, results)
	repl.release()
	if left {
		rs.status = StatusClientClosed
		rs.err = errClientGone.Error()
		closeWithoutResponse(ctx)
		return
	}
	if errors.Is(stop, errShuttingDown) {
		rs.err = stop.Error()
		writeError(ctx, rt, fasthttp.StatusServiceUnavailable, clientText(stop))
		ctx.Response.Header.Set("Retry-After", shutdownRetryAfter)
		return
	}
	writeFanoutError(ctx, rt, rs, results)
}

// finalFanoutLine returns the last line of a streamed fan-out: success,
// or an error naming each node that failed, or each node that still has
// the older model that repl was to remove.
func (s *Server) finalFanoutLine(rt route, rs *reqState, results []fanoutResult,
	repl *replacement) []byte {
	if !fanoutSucceeded(rt, results) {
		repl.release()
		rs.err = fanoutFailure(rt, rs, withDetails(results))
		return append(wire.OllamaError(fanoutFailure(rt, rs, results)), '\n')
	}
	s.logFailedNodes(rs, results)
	if _, msg := s.replaceOlder(rs, repl); msg != "" {
		return append(wire.OllamaError(msg), '\n')
	}
	return []byte("{\"status\":\"success\"}\n")
}

// fanoutStream is the body of a streamed fan-out: the progress of all
// nodes, merged by progressMerge, in arrival order.
type fanoutStream struct {
	lines   chan progressLine
	merge   *progressMerge
	pending []byte
	cancel  context.CancelFunc
	watch   *clientWatch
	wg      sync.WaitGroup
	s       *Server
	rs      *reqState
	ended   bool

	// streaming is closed when the first node starts a stream with a
	// success status.
	streaming     chan struct{}
	streamingOnce sync.Once
}

// markStreaming records that a node started a stream with a success
// status.
func (f *fanoutStream) markStreaming() {
	f.streamingOnce.Do(func() { close(f.streaming) })
}

// streamed reports whether a node started a stream with a success status.
func (f *fanoutStream) streamed() bool {
	select {
	case <-f.streaming:
		return true
	default:
		return false
	}
}

func (f *fanoutStream) Read(p []byte) (int, error) {
	for len(f.pending) == 0 {
		pl, ok := <-f.lines
		if !ok {
			f.ended = true
			return 0, io.EOF
		}
		f.pending = f.merge.line(pl)
	}
	n := copy(p, f.pending)
	f.pending = f.pending[n:]
	if f.rs.ttfb == 0 {
		f.rs.ttfb = elapsed(f.rs.start)
	}
	return n, nil
}

// Close cancels the node requests when the client left early, waits for
// them, and logs the request. A client that left counts as 499 also when
// the stream ended after it left, because the watch cancelled the node
// requests and the last line went nowhere.
func (f *fanoutStream) Close() error {
	left := clientLeft(f.watch, nil)
	f.watch.finish()
	if !f.ended {
		f.cancel()
		left = true
		for range f.lines { // let the sender goroutines finish
		}
	}
	if left {
		f.rs.status = StatusClientClosed
		f.rs.err = errClientGone.Error()
	}
	f.wg.Wait()
	f.cancel()
	f.s.end(f.rs)
	return nil
}

// serveUnload sends a keep_alive 0 request without prompt or input to
// each node that may have the model loaded (see unloadTargets), so that
// the model leaves every node's memory. With at most one such node it is
// forwarded as any other request, pinned to that node when there is one.
func (s *Server) serveUnload(ctx *fasthttp.RequestCtx, rt route, rs *reqState, f fields) {
	holders := s.unloadTargets(rt, f.model)
	if len(holders) <= 1 {
		if len(holders) == 1 {
			f.pinned = holders[0]
		}
		s.forward(ctx, rt, rs, f)
		for _, n := range holders {
			n.MarkUnloaded(f.model)
		}
		return
	}
	wctx, watch := watchClient(context.Background(), ctx.Conn())
	defer watch.finish()
	defer s.noteClientLeft(ctx, rs, watch)
	req := s.upstreamRequest(ctx, rs)
	defer fasthttp.ReleaseRequest(req)
	t, total := s.modelOpTimeouts(rt, false)
	results := make([]fanoutResult, len(holders))
	var wg sync.WaitGroup
	for i, n := range holders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = s.fanoutOne(wctx, n, req, t, total, nil)
		}()
	}
	wg.Wait()
	names := make([]string, 0, len(holders))
	for _, r := range results {
		if r.errMsg == "" {
			r.node.MarkUnloaded(f.model)
		}
		names = append(names, r.node.Name)
	}
	rs.node = strings.Join(names, ",")
	ctx.Response.Header.Set("X-LLMProxy-Node", rs.node)
	r := results[0]
	if r.errMsg != "" && r.status < 400 {
		writeError(ctx, rt, fasthttp.StatusBadGateway, r.errMsg)
		rs.err = r.logText()
		return
	}
	ctx.SetStatusCode(r.status)
	ctx.SetContentType(contentTypeJSON(rt))
	ctx.SetBody(r.body)
}

// unloadTargets returns the usable nodes that an unload of model on rt
// goes to. A generate or chat unload goes to every node that lists the
// model, because the proxy's view of what is loaded may be a poll old and
// Ollama (server/routes.go, v0.17.4) unloads such a request's model
// without loading it first. An embedding request loads the model before
// keep_alive 0 unloads it, so an embedding unload goes only to the nodes
// that have the model loaded, by model lists that are fetched again first.
func (s *Server) unloadTargets(rt route, model string) []*balancer.Node {
	if rt.name != "/api/embed" && rt.name != "/api/embeddings" {
		return s.bal.Listing(model)
	}
	s.refreshNodes(s.bal.Listing(model))
	return s.bal.Holding(model)
}

// refreshNodes refreshes the inventory of nodes whose models changed.
func (s *Server) refreshNodes(nodes []*balancer.Node) {
	if s.inv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), refreshTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.inv.Refresh(ctx, n); err != nil {
				s.log.Debug("inventory refresh failed", "node", n.Name, "error", err)
			}
		}()
	}
	wg.Wait()
}

// refreshBeforeWrite refreshes every node's model list before a delete,
// copy or create, whose checks and removal of older models go by those
// lists. A model added since the last poll, through another instance or on
// a node directly, would otherwise be missed, and a copy onto its name
// would leave two models under it. It waits up to refreshTimeout, and a
// node whose refresh fails keeps its last list.
func (s *Server) refreshBeforeWrite() {
	s.refreshNodes(s.bal.Nodes())
}

// refreshAll refreshes every node's inventory, at most once a second. It
// reports whether it refreshed and ctx is still live.
func (s *Server) refreshAll(ctx context.Context) bool {
	now := time.Now().UnixNano()
	last := s.lastRefresh.Load()
	if s.inv == nil || now-last < int64(time.Second) || !s.lastRefresh.CompareAndSwap(last, now) {
		return false
	}
	s.refreshNodes(s.bal.Nodes())
	return ctx.Err() == nil
}
