// /townhall: the server lists the events; dates are shown in the reader's time zone.
import { fillTimes } from './townhall_common.js';

fillTimes();
