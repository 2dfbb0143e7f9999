/* ddpm-book: search results with the matching passage, also for pages opened from disk.
 *
 * Sphinx's search page (searchtools.js) fetches every result page to cut a passage from it.
 * Browsers refuse fetch() for file:// pages, so offline the results showed titles only. The
 * build writes the text of every page into ddpm_search_passages.js (book/_ext/book_reader.py);
 * this answers the search page's fetches of those pages from it. Loaded on search.html only.
 */
(() => {
  const passages = window.DDPM_SEARCH_PASSAGES || {};
  const realFetch = window.fetch ? window.fetch.bind(window) : null;
  window.fetch = (input, init) => {
    try {
      const url = new URL(typeof input === "string" ? input : input.url, document.baseURI);
      const root = new URL(document.documentElement.dataset.content_root || "./", document.baseURI);
      if (url.href.startsWith(root.href)) {
        const page = decodeURIComponent(url.pathname.slice(root.pathname.length));
        if (Object.prototype.hasOwnProperty.call(passages, page)) {
          return Promise.resolve(new Response(passages[page], { headers: { "Content-Type": "text/html" } }));
        }
      }
    } catch (e) {
      /* not a page of this book: fall through */
    }
    return realFetch(input, init);
  };
})();
