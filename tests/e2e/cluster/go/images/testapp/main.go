// testapp is the cluster tier's first test image. Subcommands:
//
//	serve [addr]               HTTP server: "hello from <hostname>" on every path
//	get URL                    GET URL (retrying for up to 30s), print the body, fail on non-2xx
//	s3 ENDPOINT BUCKET         SigV4-signed PUT, GET and DELETE of an object (AWS_ACCESS_KEY_ID,
//	                           AWS_SECRET_ACCESS_KEY from the environment)
//	incluster                  in-cluster config (KUBERNETES_SERVICE_HOST/PORT, service account
//	                           token and CA): POST a SelfSubjectReview and print the username
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: testapp serve|get|s3|incluster ...")
	}
	switch os.Args[1] {
	case "serve":
		addr := ":8080"
		if len(os.Args) > 2 {
			addr = os.Args[2]
		}
		host, _ := os.Hostname()
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s\n", host)
		})
		fmt.Println("listening on", addr)
		fail(http.ListenAndServe(addr, nil))
	case "get":
		need(3)
		body, err := retry(30*time.Second, func() ([]byte, error) { return get(http.DefaultClient, os.Args[2]) })
		if err != nil {
			fail(err)
		}
		os.Stdout.Write(body)
	case "s3":
		need(4)
		if err := s3Check(os.Args[2], os.Args[3]); err != nil {
			fail(err)
		}
	case "incluster":
		if err := inCluster(); err != nil {
			fail(err)
		}
	default:
		fail("unknown subcommand " + os.Args[1])
	}
}

func need(n int) {
	if len(os.Args) < n {
		fail("missing arguments")
	}
}

func fail(v any) {
	fmt.Fprintln(os.Stderr, "testapp:", v)
	os.Exit(1)
}

func retry(d time.Duration, f func() ([]byte, error)) ([]byte, error) {
	deadline := time.Now().Add(d)
	for {
		b, err := f()
		if err == nil || time.Now().After(deadline) {
			return b, err
		}
		fmt.Fprintln(os.Stderr, "retrying:", err)
		time.Sleep(time.Second)
	}
}

func get(c *http.Client, url string) ([]byte, error) {
	c2 := *c
	c2.Timeout = 5 * time.Second
	resp, err := c2.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return b, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b, nil
}

// ---- S3 (SigV4, path-style) ----

func hmacSHA(key []byte, s string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(s))
	return m.Sum(nil)
}

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func s3Do(endpoint, method, path string, body []byte) (int, []byte, error) {
	ak, sk := os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY")
	region := os.Getenv("AWS_REGION")
	if region == "" {
		region = "us-east-1"
	}
	req, err := http.NewRequest(method, strings.TrimRight(endpoint, "/")+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	now := time.Now().UTC()
	amzDate, day := now.Format("20060102T150405Z"), now.Format("20060102")
	ph := sha(body)
	req.Header.Set("x-amz-date", amzDate)
	req.Header.Set("x-amz-content-sha256", ph)
	hdrs := map[string]string{"host": req.URL.Host, "x-amz-content-sha256": ph, "x-amz-date": amzDate}
	var names []string
	for k := range hdrs {
		names = append(names, k)
	}
	sort.Strings(names)
	var canonHdrs strings.Builder
	for _, k := range names {
		canonHdrs.WriteString(k + ":" + hdrs[k] + "\n")
	}
	signed := strings.Join(names, ";")
	canon := strings.Join([]string{method, req.URL.EscapedPath(), req.URL.RawQuery, canonHdrs.String(), signed, ph}, "\n")
	scope := day + "/" + region + "/s3/aws4_request"
	sts := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + sha([]byte(canon))
	k := hmacSHA([]byte("AWS4"+sk), day)
	k = hmacSHA(k, region)
	k = hmacSHA(k, "s3")
	k = hmacSHA(k, "aws4_request")
	sig := hex.EncodeToString(hmacSHA(k, sts))
	req.Header.Set("Authorization", fmt.Sprintf("AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s", ak, scope, signed, sig))
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func s3Check(endpoint, bucket string) error {
	host, _ := os.Hostname()
	key := "/" + bucket + "/testapp/" + host + ".txt"
	payload := []byte("written by testapp in pod " + host + "\n")
	var code int
	var b []byte
	_, err := retry(30*time.Second, func() ([]byte, error) {
		var err error
		code, b, err = s3Do(endpoint, "PUT", key, payload)
		if err == nil && code/100 != 2 {
			err = fmt.Errorf("PUT %s: %d %s", key, code, b)
		}
		return nil, err
	})
	if err != nil {
		return err
	}
	code, b, err = s3Do(endpoint, "GET", key, nil)
	if err != nil {
		return err
	}
	if code != 200 || !bytes.Equal(b, payload) {
		return fmt.Errorf("GET %s: %d %q", key, code, b)
	}
	// An unsigned request must be refused: proves the server checks credentials.
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(strings.TrimRight(endpoint, "/") + key)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		return fmt.Errorf("anonymous GET %s succeeded: credentials are not enforced", key)
	}
	if code, b, err = s3Do(endpoint, "DELETE", key, nil); err != nil || code/100 != 2 {
		return fmt.Errorf("DELETE %s: %d %s %v", key, code, b, err)
	}
	fmt.Printf("s3 ok: PUT/GET/DELETE %s (anonymous GET refused with %d)\n", key, resp.StatusCode)
	return nil
}

// ---- in-cluster config ----

func inCluster() error {
	const sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return fmt.Errorf("KUBERNETES_SERVICE_HOST/PORT not set")
	}
	token, err := os.ReadFile(sa + "token")
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(sa + "ca.crt")
	if err != nil {
		return err
	}
	ns, _ := os.ReadFile(sa + "namespace")
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("bad ca.crt")
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + net.JoinHostPort(host, port)
	body := []byte(`{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`)
	req, _ := http.NewRequest("POST", base+"/apis/authentication.k8s.io/v1/selfsubjectreviews", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 201 {
		return fmt.Errorf("SelfSubjectReview: %s: %s", resp.Status, rb)
	}
	var r struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if err := json.Unmarshal(rb, &r); err != nil {
		return err
	}
	fmt.Printf("in-cluster ok: %s as %s (namespace %s)\n", base, r.Status.UserInfo.Username, ns)
	return nil
}
