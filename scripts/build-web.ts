/** `npm run build:web`: bundles the demo page into web/dist/ (index.html, style.css, main.js), for any static server. */
import { writeWebDist } from "../src/cli/web-bundle.ts";

for (const file of await writeWebDist()) console.log(file);
