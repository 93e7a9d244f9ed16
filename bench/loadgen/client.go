package loadgen

import (
	"bytes"
	"fmt"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// requestTimeout bounds one non-streamed request.
const requestTimeout = 30 * time.Second

// Request is the HTTP request a load phase repeats: a JSON POST.
type Request struct {
	Path string
	Body []byte
}

// StatusError is a response whose status is not 200.
type StatusError struct {
	Status int
	Body   string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("status %d: %s", e.Status, e.Body)
}

// Client sends requests round robin over one or more base URLs over
// keep-alive connections. fasthttp keeps the generator's own CPU cost low,
// which leaves more of a small machine to the servers under test.
type Client struct {
	hosts []hostClient
	next  atomic.Uint64
}

type hostClient struct {
	hc   *fasthttp.HostClient
	base string // scheme://host:port
}

// NewClient returns a client for baseURLs (http://host:port) that opens at
// most maxConnsPerHost connections to each.
func NewClient(baseURLs []string, maxConnsPerHost int) (*Client, error) {
	c := &Client{}
	for _, raw := range baseURLs {
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "http" || u.Host == "" {
			return nil, fmt.Errorf("invalid base URL %q, want http://host:port", raw)
		}
		c.hosts = append(c.hosts, hostClient{
			base: "http://" + u.Host,
			hc: &fasthttp.HostClient{
				Addr:                u.Host,
				MaxConns:            maxConnsPerHost,
				MaxIdleConnDuration: time.Minute,
				ReadBufferSize:      16 << 10,
				WriteBufferSize:     16 << 10,
			},
		})
	}
	if len(c.hosts) == 0 {
		return nil, fmt.Errorf("no base URL")
	}
	return c, nil
}

// Do sends r to the next base URL and returns nil for a 200 response.
func (c *Client) Do(r Request) error {
	_, err := c.DoHeader(r, "")
	return err
}

// DoHeader sends r to the next base URL like Do and also returns the
// value of the response header named header, when header is not empty.
func (c *Client) DoHeader(r Request, header string) (string, error) {
	h := c.hosts[c.next.Add(1)%uint64(len(c.hosts))]
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)

	req.SetRequestURI(h.base + r.Path)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	req.SetBodyRaw(r.Body)
	if err := h.hc.DoTimeout(req, resp, requestTimeout); err != nil {
		return "", err
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		body := resp.Body()
		excerpt := bytes.TrimSpace(body[:min(len(body), 200)])
		return "", &StatusError{Status: resp.StatusCode(), Body: string(excerpt)}
	}
	if header == "" {
		return "", nil
	}
	return string(resp.Header.Peek(header)), nil
}

// Close closes the idle connections.
func (c *Client) Close() {
	for _, h := range c.hosts {
		h.hc.CloseIdleConnections()
	}
}
