package proxy

import (
	"bytes"
	"context"
	"errors"
	"github.com/llmproxy/llmproxy/internal/wire"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/ratelimit"
)

// identify finds the request's API key, client identity and priority
// class. A missing or unknown key gets 401 when keys are required. A class
// above the key's own, or an unknown class, gets 400. It reports whether
// the request may continue.
func (s *Server) identify(ctx *fasthttp.RequestCtx, rt route, rs *reqState) bool {
	key, err := s.authenticate(&ctx.Request.Header)
	if err != nil {
		msg := "invalid API key: send a valid key as Authorization: Bearer KEY or X-API-Key"
		if errors.Is(err, ratelimit.ErrMissingKey) {
			msg = "missing API key: send it as Authorization: Bearer KEY or X-API-Key"
		}
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="llmproxy"`)
		writeError(ctx, rt, fasthttp.StatusUnauthorized, msg)
		return false
	}
	rs.apiKey = key
	rs.client = s.clientAddr(ctx)
	if rs.apiKey != nil {
		rs.key = rs.apiKey.Name
		rs.client = "key:" + rs.apiKey.Name
		rs.class = rs.apiKey.Priority
	}
	return s.chooseClass(ctx, rt, rs)
}

// authenticate returns the API key that the request head h presents, nil
// for none, or the limiter's error for a missing or unknown key that must
// be rejected. Without a limiter every request is anonymous.
func (s *Server) authenticate(h *fasthttp.RequestHeader) (*ratelimit.Key, error) {
	lim := s.limiter()
	if lim == nil {
		return nil, nil
	}
	return lim.Authenticate(h.Peek("Authorization"), h.Peek("X-API-Key"))
}

// chooseClass applies X-Priority. With a key, the key's class is the
// highest a request may ask for, so a batch key cannot jump the queue.
func (s *Server) chooseClass(ctx *fasthttp.RequestCtx, rt route, rs *reqState) bool {
	class, reject := s.priorityClass(ctx.Request.Header.Peek("X-Priority"), rs.apiKey)
	if reject != "" {
		writeError(ctx, rt, fasthttp.StatusBadRequest, reject)
		return false
	}
	if class != "" {
		rs.class = class
	}
	return true
}

// priorityClass returns the class that the X-Priority value p requests,
// "" when p is empty, or the message that rejects p for a request with
// key, nil for none.
func (s *Server) priorityClass(p []byte, key *ratelimit.Key) (class, reject string) {
	if len(p) == 0 {
		return "", ""
	}
	class = strings.ToLower(strings.TrimSpace(string(p)))
	if config.ClassRank(class) < 0 {
		return "", "unknown priority class " + quote(string(p)) +
			" in X-Priority, want one of " + strings.Join(config.Classes, ", ")
	}
	if key == nil && len(s.config().Auth.Keys) > 0 &&
		config.ClassRank(class) < config.ClassRank(config.ClassStandard) {
		// Where keys exist, a client without one gets no more than the
		// standard class, so that dropping a key never outranks holding one.
		return "", "priority class " + quote(class) + " needs an API key with that class"
	}
	if key != nil && config.ClassRank(class) < config.ClassRank(key.Priority) {
		return "", "priority class " + quote(class) + " is above the " + quote(key.Priority) +
			" class of key " + quote(key.Name)
	}
	return class, ""
}

// clientAddr returns the client's address, taken from X-Forwarded-For
// only when the peer is a trusted proxy.
func (s *Server) clientAddr(ctx *fasthttp.RequestCtx) string {
	if lim := s.limiter(); lim != nil {
		xff := bytes.Join(ctx.Request.Header.PeekAll("X-Forwarded-For"), []byte(","))
		return lim.ClientAddr(ctx.RemoteIP(), xff)
	}
	return remoteIP(ctx)
}

// allowsModel reports whether the request's API key may use model, given
// as the client wrote it, and responds 403 when it may not. A request
// without a key may use every model.
func allowsModel(ctx *fasthttp.RequestCtx, rt route, rs *reqState, model string) bool {
	if keyAllows(rs, model) {
		return true
	}
	writeError(ctx, rt, fasthttp.StatusForbidden,
		"key "+quote(rs.apiKey.Name)+" may not use model "+quote(model))
	return false
}

// keyAllows reports whether the request's API key may use model, by the
// key's allowed_models. A request without a key may use every model.
func keyAllows(rs *reqState, model string) bool {
	return rs.apiKey == nil || rs.apiKey.Allows(wire.NormalizeModel(model))
}

// admit checks the key's model list and every limit before the request
// reaches the queue. A rejected request consumes nothing and gets 403 or
// 429 with the limit named and the rate limit headers set.
func (s *Server) admit(ctx *fasthttp.RequestCtx, rt route, rs *reqState, f fields) bool {
	lim := s.limiter()
	if lim == nil || (rs.apiKey == nil && s.config().RateLimit.PerAddress == 0) {
		return true // nothing to enforce
	}
	if f.model != "" && !allowsModel(ctx, rt, rs, f.rawModel) {
		return false
	}
	addr := ""
	if rs.apiKey == nil {
		addr = rs.client
	}
	d, res := lim.Admit(context.Background(), ratelimit.Request{
		Key:         rs.apiKey,
		Addr:        addr,
		Tokens:      f.reserveTokens,
		InputTokens: f.promptTokens,
		Model:       s.modelLabel(f.model),
		// Only routes that run a model count towards the token and
		// request quotas.
		Uncounted: !rt.inference,
	})
	d.VisitHeaders(ctx.Response.Header.Set)
	if !d.Allowed {
		subject := "this client address"
		if rs.apiKey != nil {
			subject = "key " + quote(rs.apiKey.Name)
		}
		writeError(ctx, rt, fasthttp.StatusTooManyRequests,
			"rate limit exceeded: "+limitText(d.Limit)+" of "+subject+", retry after "+retryAfter(d))
		return false
	}
	rs.reservation = res
	return true
}

// reservesPrompt reports whether a request reserves an estimate of its
// prompt's tokens besides its output limit, so that many large prompts
// sent at once cannot overrun the key's token limits. That is a
// generation request of a key with a token limit. An embedding request's
// reservation is already an estimate of its input.
func reservesPrompt(rt route, rs *reqState) bool {
	switch {
	case rs.apiKey == nil || !rt.inference:
		return false
	case rt.name == "/api/embed" || rt.name == "/v1/embeddings" || rt.name == "/api/embeddings":
		return false
	}
	l := rs.apiKey.Limits()
	return l.TokensPerMinute > 0 || l.MonthlyTokens > 0
}

func limitText(l ratelimit.Limit) string {
	switch l {
	case ratelimit.LimitRequests:
		return "request rate"
	case ratelimit.LimitTokens:
		return "tokens per minute"
	case ratelimit.LimitConcurrency:
		return "concurrent requests"
	case ratelimit.LimitMonthlyTokens:
		return "monthly token quota"
	case ratelimit.LimitMonthlyRequests:
		return "monthly request quota"
	}
	return string(l)
}

func retryAfter(d ratelimit.Decision) string {
	secs := int64(d.RetryAfter.Seconds() + 0.999)
	return itoa(int(max(secs, 1))) + "s"
}

// settle charges the tokens the node reported and frees the key's slot. A
// request that was not served does not count towards monthly_requests.
func (rs *reqState) settle() {
	if rs.reservation == nil {
		return
	}
	if rs.unserved() {
		rs.reservation.SettleUnserved(rs.promptTokens, rs.completionTokens)
	} else {
		rs.reservation.Settle(rs.promptTokens, rs.completionTokens)
	}
	rs.reservation = nil
}

// unserved reports whether the proxy or the nodes failed to serve the
// request: it ended with a 5xx status, the proxy ended its stream before
// the node finished it, or its client left before any byte of the response
// body was sent.
func (rs *reqState) unserved() bool {
	return rs.status >= 500 || rs.proxyEnded ||
		(rs.status == StatusClientClosed && rs.ttfb == 0)
}

// stripProxyKey removes the proxy's own API key from a request before it
// is forwarded. Nodes need no key and must never see one.
func stripProxyKey(h *fasthttp.RequestHeader) {
	for _, k := range proxyKeyHeaders {
		h.Del(k)
	}
}

// proxyKeyHeaders are the headers that carry the proxy's API key.
var proxyKeyHeaders = []string{"Authorization", "X-API-Key"}
